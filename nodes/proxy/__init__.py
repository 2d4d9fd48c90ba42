"""The bus proxy node: forwards every topic between publishers and subscribers."""

from vigil.nodes.proxy._contract import KIND, Config, ProxyConfig

__all__ = ["KIND", "Config", "ProxyConfig"]
