"""The seed's error numbers, unchanged, so C and Python callers read the same codes."""

import errno
from enum import IntEnum

# What entering a rocker whose guard has just died looks like (setns, clone into its PID namespace)
GONE_ERRNOS = (errno.ESRCH, errno.ENOMEM, errno.ENOENT)
GONE_WHY = " (the rocker is gone: its guard exited)"


class RockerErr(IntEnum):
    unknown = -1
    success = 0
    sys = 1
    param_invalid = 2
    server_unaddr_invalid = 3
    gen_local_addr_failed = 4
    send_req_failed = 5
    recv_resp_failed = 6
    build_rocker_failed = 7
    enter_rocker_failed = 8
    app_exec_failed = 9
    get_guardname_failed = 10
