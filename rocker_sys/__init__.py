"""ctypes syscall wrappers shared by the client and the daemon.

Nothing here spawns a process or imports anything heavy: these run on the hot
path of building and entering a rocker. Each wrapper raises an OSError that
names the syscall and, where there is one, the path.
"""
