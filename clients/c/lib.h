/* librocker_client: the seed's C API, talking to rockerd (varlink over a unix socket).
 * Link with -lrocker_client. See docs/c-client.md.
 * SPDX-License-Identifier: MIT */
#ifndef ROCKER_LIB_H
#define ROCKER_LIB_H

#include "err_no.h"

#ifdef __cplusplus
extern "C" {
#endif

//! All interfaces return this struct.
//! NOTE: returned as a value, not a pointer.
//-
//@ err_no: self-descriptive error number
//@ guard_pid: PID of rocker's PID-1 process as seen from outside the rocker
//@ guard_pname: name of rocker's PID-1 process; randomly generated, guaranteed unique by the server
//@ app_pid: PID of the process executing the requested action (app)
typedef struct {
    ROCKER_ERR err_no;
    int app_pid;
    int guard_pid;
    char guard_pname[16];
} RockerResult;

//! Data structure exchanged between rocker_client and rocker_server.
//-
//@ app_id: APP uuid
//@ uid: euid of the App process
//@ gid: egid of the App process
//@ app_pkg_path: path to the App source file, e.g. /apps/xx.squashfs
//@ app_exec_dir: execution path of the App, i.e. mount path of app_pkg_path
//@ app_data_dir: top-level storage path for all data written by the App
//@ app_overlay_dirs[16]: top-level directories for which an overlay layer is needed, e.g. /var; max 16
//@                       (the non-NULL entries are sent, in order)
typedef struct {
    int app_id;
    int uid;
    int gid;

    char *app_pkg_path;
    char *app_exec_dir;
    char *app_data_dir;
    char *app_overlay_dirs[16];
} RockerRequest;

//! rocker's additions to the request, beside the seed's RockerRequest (whose layout stays the seed's).
//! Start from ROCKER_OPTIONS_INIT, then set what you need; a NULL field means rockerd's default.
//-
//@ size: sizeof(RockerOptions) as the caller was compiled (ROCKER_OPTIONS_INIT sets it): later
//@       versions add fields at the end; a library older than the caller refuses non-zero ones
//@ seccomp: the app's syscall filter profile: "default", "nested", "complain" or "unconfined"
//@          (only root may ask for the last two; docs/security.md)
typedef struct {
    unsigned int size;
    const char *seccomp;
} RockerOptions;

#define ROCKER_OPTIONS_INIT                                                                                            \
    { sizeof(RockerOptions), NULL }

//! API to request creation of a new rocker and run the specified function inside it.
//! Returns a RockerResult struct (NOTE: value, not pointer).
//! The app runs in a child of the caller (waitpid(res.app_pid, ...) works) and
//! exits with app's return value.
//-
//@ req[in]: configuration data needed to create the new rocker
//@ app[in]: function to execute inside the rocker once it is created
//@ app_args[in]: arguments to pass to the app function
RockerResult ROCKER_enter_rocker(RockerRequest *req, int (*app)(void *), void *app_args)
    __attribute__((visibility("default")));

//! API to run the specified function in a new process inside a live rocker (`rocker exec`):
//! it joins the rocker's namespaces, ids and capabilities as its first app did.
//! Only root and the uid the rocker's app runs as may join it (else ROCKER_ERR_param_invalid);
//! a rocker that has ended is ROCKER_ERR_enter_rocker_failed.
//! Returns a RockerResult struct (NOTE: value, not pointer), as ROCKER_enter_rocker.
//-
//@ guard_pname[in]: the rocker's name, the guard_pname ROCKER_enter_rocker returned
//@ app[in]: function to execute inside the rocker
//@ app_args[in]: arguments to pass to the app function
RockerResult ROCKER_join_rocker(const char *guard_pname, int (*app)(void *), void *app_args)
    __attribute__((visibility("default")));

//! ROCKER_enter_rocker with rocker's additions to the request (opts NULL: none, as ROCKER_enter_rocker).
//! ROCKER_ERR_param_invalid if opts->size is too small, or larger with non-zero bytes this library does not know.
RockerResult ROCKER_enter_rocker_opts(RockerRequest *req, const RockerOptions *opts, int (*app)(void *), void *app_args)
    __attribute__((visibility("default")));

//! Get the name of the specified process from '/proc/<PID>/stat'.
//! Before the client sends a signal to the guard process, compare the name
//! against the original returned at rocker creation to confirm the PID has not been reused.
//-
//@ pid[in]: PID of the target process
RockerResult ROCKER_get_guardname(int pid) __attribute__((visibility("default")));

//! Why a call failed, as data (RockerResult has no room for it): ROCKER_last_cause fills one in.
//-
//@ kind: the short name of rockerd's varlink error (InvalidRequest, PermissionDenied, BuildFailed,
//@       LimitReached, NoSuchRocker, ...), or where this library failed: connect, send, receive,
//@       enter (joining the rocker), gone (its guard exited meanwhile), app (starting the app),
//@       param (a bad argument, nothing sent), sys (a local resource)
//@ reason: why, in words (rockerd's own reason for its errors); truncated to fit
//@ field: the request field a refusal is about, e.g. "app_overlay_dirs[1]"; "" if none
//@ step: the step that failed (a BuildFailed's build step, "setns user", ...); "" if none
//@ errnum: the error number when there is one (connect's ECONNREFUSED, a step's errno), else 0
typedef struct {
    char kind[32];
    char reason[512];
    char field[128];
    char step[64];
    int errnum;
} RockerCause;

//! The cause of the calling thread's last failed ROCKER_enter_rocker(_opts) or ROCKER_join_rocker
//! call, copied to *out (like dlerror, per thread; each call replaces it, a call that succeeds clears it).
//! Returns 0, or -1 (*out zeroed) if that thread's last call succeeded or it made none.
//-
//@ out[out]: where to copy the cause
int ROCKER_last_cause(RockerCause *out) __attribute__((visibility("default")));

//! Return a new RockerRequest instance (all fields zero / NULL).
RockerRequest ROCKER_request_new(void) __attribute__((visibility("default")));

#ifdef __cplusplus
}
#endif

#endif /* ROCKER_LIB_H */
