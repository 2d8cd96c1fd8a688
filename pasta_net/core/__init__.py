"""The sans-IO core: frames and time in, actions out.

Nothing in this package performs I/O, reads a clock or imports trio/socket; the shell
(:mod:`pasta_net.shell`) executes what the core asks for.
"""
