"""Out of file descriptors: listeners refuse new connections at once instead of spinning.

Each case runs in a child process whose RLIMIT_NOFILE is lowered, so that exhausting
it cannot disturb the test run itself.
"""

from __future__ import annotations

from tests.shell.conftest import run_python

_PRELUDE = """
import os, resource, socket, sys
sys.path.insert(0, {root!r})
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

def exhaust():
    hog = []
    try:
        while True:
            hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        return hog
"""


def run_child(body: str) -> str:
    return run_python(_PRELUDE, body).strip()


def test_spare_fd_refuses_a_connection_with_a_reset_and_is_taken_back() -> None:
    out = run_child("""
        from pasta_net.shell.reserve import SpareFd
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        clients = [socket.socket() for _ in range(2)]
        spare = SpareFd()
        hog = exhaust()
        for client in clients:
            client.connect(listener.getsockname())
        try:
            listener.accept()
        except OSError as exc:
            print(exc.errno == 24)
        print(spare.refuse(listener), spare.refuse(listener), spare.refuse(listener))
        for client in clients:
            try:
                print(client.recv(1))
            except ConnectionResetError:
                print("reset")
        os.close(hog.pop())
        print(spare._fd >= 0)
    """)
    assert out.split() == ["True", "True", "True", "False", "reset", "reset", "True"]


def test_listener_out_of_fds_refuses_and_serves_the_next_connection() -> None:
    """The hub's accept path: a connection arriving at EMFILE is reset, the listener
    does not stay readable, and once fds are free again the next one is served."""
    out = run_child("""
        import trio
        from pasta_net.core.actions import SocketKind
        from pasta_net.shell import listeners
        from pasta_net.shell.hub import Hub
        from tests.core.wire import engine

        class NoTap:
            fd = os.pipe()[0]  # never readable
            def read_batch(self): return []
            def write_batch(self, frames): pass
            def close(self): pass

        hub = Hub(engine(), NoTap())
        accepted = []
        binding = listeners.Binding(accept=lambda l, conn, c: accepted.append(conn))
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        listener = listeners.Listener(sock, SocketKind.TCP, 1, hub.engine.new_flow_id())
        listeners._register(hub, listener, binding)
        first, second = socket.socket(), socket.socket()
        hog = exhaust()
        first.connect(sock.getsockname())
        for fd, mask in hub.epoll.poll(1):
            hub._fd_handlers[fd](mask)
        try:
            first.recv(1)
        except ConnectionResetError:
            print("refused")
        print(hub.epoll.poll(0) == [])
        for fd in hog[:8]:
            os.close(fd)
        second.connect(sock.getsockname())
        for fd, mask in hub.epoll.poll(1):
            hub._fd_handlers[fd](mask)
        print(len(accepted))
    """)
    assert out.split() == ["refused", "True", "1"]
