"""The trio shell: owns the tap fd and host sockets, runs the core's actions."""
