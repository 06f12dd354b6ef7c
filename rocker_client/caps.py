"""The capabilities an app keeps inside its rocker (where it runs as uid 0).

Docker's default set less CAP_MKNOD and CAP_NET_RAW. Leaving out CAP_SYS_ADMIN
keeps the app from unmounting its overlays (which for a uid-0 rocker would
expose the host's dirs), CAP_SYS_PTRACE keeps it off the (non-dumpable) guard.
They are capabilities in the rocker's user namespace only: in the host's the
app has none.
"""

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_FOWNER = 3
CAP_FSETID = 4
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_SYS_CHROOT = 18
CAP_AUDIT_WRITE = 29
CAP_SETFCAP = 31

APP_CAPS = (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP,
            CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_AUDIT_WRITE, CAP_SETFCAP)
APP_CAP_MASK = sum(1 << c for c in APP_CAPS)
