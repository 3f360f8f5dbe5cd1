"""Helpers the tests share: servers, hosts, NBD tools. No test lives here."""
