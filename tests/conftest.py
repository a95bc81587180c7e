"""Session-wide test hygiene shared by every test folder."""

import signal

import pytest


@pytest.fixture(autouse=True)
def _restore_sigchld_handler():
    """A torch DataLoader with worker processes installs a process-wide SIGCHLD handler and leaves it
    installed. In this one long pytest process, once OpenVINO has run (the export parity tests),
    the next child process to exit (a ``subprocess.run`` in a later test) crashed the interpreter
    with SIGSEGV inside that handler; resetting SIGCHLD made the crash go away (2026-12-01, #15).
    Each test gets back the handler it started with, as a separate process would."""
    before = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, before if before is not None else signal.SIG_DFL)
