"""Password checks through the host's PAM stack, via a small ctypes binding to libpam.

authd is the only user: it runs as root on the host and answers the hub's login requests, so
the hub never needs /etc/shadow. `authenticate()` runs one PAM transaction (pam_start,
pam_authenticate, pam_acct_mgmt, pam_end) and returns a `PamResult`; it blocks (PAM may do
I/O), so async callers run it in a thread. Passwords are never logged or kept: they exist
only as the argument, and as malloc'd copies that PAM itself wipes and frees.

ref: The Linux-PAM Application Developers' Guide (pam_start(3), pam_conv(3),
pam_set_item(3) for PAM_FAIL_DELAY).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools

# Return codes, message styles, items and flags from Linux-PAM's _pam_types.h.
PAM_SUCCESS = 0
PAM_BUF_ERR = 5
PAM_AUTH_ERR = 7
PAM_USER_UNKNOWN = 10
PAM_NEW_AUTHTOK_REQD = 12
PAM_ACCT_EXPIRED = 13
PAM_CONV_ERR = 19

PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4

PAM_RHOST = 4
PAM_FAIL_DELAY = 10

PAM_SILENT = 0x8000
# Refuse accounts with an empty password even where a module says `nullok`.
PAM_DISALLOW_NULL_AUTHTOK = 0x0001


class PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class PamResponse(ctypes.Structure):
    # resp is a raw pointer, not c_char_p: PAM frees it, so it must come from malloc.
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


CONV_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.POINTER(PamMessage)),
    ctypes.POINTER(ctypes.POINTER(PamResponse)),
    ctypes.c_void_p,
)
DELAY_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


class PamConv(ctypes.Structure):
    _fields_ = [("conv", CONV_FUNC), ("appdata_ptr", ctypes.c_void_p)]


class PamUnavailable(RuntimeError):
    """libpam cannot be loaded on this machine."""


@dataclasses.dataclass(frozen=True)
class PamResult:
    """Outcome of one PAM transaction.

    ok: the password is right and the account may be used (possibly with an expired
    password). password_expired: the account manager demands a new password
    (PAM_NEW_AUTHTOK_REQD, e.g. after `chage -d 0`). code/step/reason: the PAM return code,
    the call that produced it and pam_strerror's text, for logs.
    """

    ok: bool
    code: int
    step: str
    reason: str
    password_expired: bool = False
    messages: tuple[str, ...] = ()


class _Lib:
    """The libpam and libc functions we call, with their C signatures."""

    def __init__(self) -> None:
        pam_name = ctypes.util.find_library("pam")
        if not pam_name:
            raise PamUnavailable("libpam not found")
        self.pam = ctypes.CDLL(pam_name)
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"))

        self.pam.pam_start.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.POINTER(PamConv),
            ctypes.POINTER(ctypes.c_void_p),
        ]
        self.pam.pam_start.restype = ctypes.c_int
        for name in ("pam_authenticate", "pam_acct_mgmt", "pam_end"):
            fn = getattr(self.pam, name)
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int]
            fn.restype = ctypes.c_int
        self.pam.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        self.pam.pam_set_item.restype = ctypes.c_int
        self.pam.pam_strerror.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.pam.pam_strerror.restype = ctypes.c_char_p

        self.libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
        self.libc.calloc.restype = ctypes.c_void_p
        self.libc.strdup.argtypes = [ctypes.c_char_p]
        self.libc.strdup.restype = ctypes.c_void_p
        self.libc.free.argtypes = [ctypes.c_void_p]
        self.libc.free.restype = None


@functools.cache
def _lib() -> _Lib:
    return _Lib()


def available() -> bool:
    """Whether libpam can be loaded here."""
    try:
        _lib()
    except (PamUnavailable, OSError):
        return False
    return True


def _no_delay(retval: int, usec: int, appdata: int | None) -> None:
    """PAM_FAIL_DELAY hook that does not sleep: the caller delays failures itself."""


# One module-level instance: the pointer handed to PAM must outlive every transaction.
_NO_DELAY = DELAY_FUNC(_no_delay)


def authenticate(
    username: str,
    password: str,
    service: str = "scirepo",
    *,
    check_account: bool = True,
    rhost: str | None = None,
    pam_delay: bool = False,
) -> PamResult:
    """Check `password` for `username` with PAM service `service`.

    With check_account, pam_acct_mgmt runs after a successful authentication; its
    PAM_NEW_AUTHTOK_REQD gives ok=True, password_expired=True, and any other failure ok=False.
    pam_delay=False replaces PAM's own failure delay (pam_unix sleeps about 2 s, only on some
    failures) with none, so that the caller can make every failure take the same time and
    not reveal which check failed.
    """
    lib = _lib()
    user_b = username.encode()
    pass_b = password.encode()
    if b"\0" in user_b or b"\0" in pass_b:
        # A C string would silently cut the password at the NUL.
        return PamResult(False, PAM_AUTH_ERR, "input", "NUL byte in username or password")

    messages: list[str] = []

    def converse(n_msg, msgs, resp_out, _appdata):
        try:
            array = lib.libc.calloc(n_msg, ctypes.sizeof(PamResponse))
            if not array:
                return PAM_BUF_ERR
            responses = ctypes.cast(array, ctypes.POINTER(PamResponse))
            for i in range(n_msg):
                # Linux-PAM passes an array of pointers to messages.
                msg = msgs[i].contents
                if msg.msg_style == PAM_PROMPT_ECHO_OFF:
                    responses[i].resp = lib.libc.strdup(pass_b)
                elif msg.msg_style == PAM_PROMPT_ECHO_ON:
                    # A visible prompt asks for the login name; we have no other answer.
                    responses[i].resp = lib.libc.strdup(user_b)
                elif msg.msg_style in (PAM_ERROR_MSG, PAM_TEXT_INFO) and msg.msg:
                    messages.append(msg.msg.decode(errors="replace"))
            resp_out[0] = responses
            return PAM_SUCCESS
        except Exception:  # an exception must not cross into C
            return PAM_CONV_ERR

    conv_cb = CONV_FUNC(converse)  # kept referenced until pam_end below
    conv = PamConv(conv_cb, None)
    handle = ctypes.c_void_p()
    code = lib.pam.pam_start(service.encode(), user_b, ctypes.byref(conv), ctypes.byref(handle))
    if code != PAM_SUCCESS:
        return PamResult(False, code, "pam_start", f"pam_start failed ({code})")

    def result(ok: bool, code: int, step: str, expired: bool = False) -> PamResult:
        reason = (lib.pam.pam_strerror(handle, code) or b"").decode(errors="replace")
        return PamResult(ok, code, step, reason, expired, tuple(messages))

    status = PAM_SUCCESS
    try:
        if not pam_delay:
            lib.pam.pam_set_item(handle, PAM_FAIL_DELAY, ctypes.cast(_NO_DELAY, ctypes.c_void_p))
        if rhost:
            lib.pam.pam_set_item(handle, PAM_RHOST, ctypes.c_char_p(rhost.encode()))
        flags = PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK
        status = lib.pam.pam_authenticate(handle, flags)
        if status != PAM_SUCCESS:
            return result(False, status, "pam_authenticate")
        if not check_account:
            return result(True, status, "pam_authenticate")
        status = lib.pam.pam_acct_mgmt(handle, flags)
        if status == PAM_NEW_AUTHTOK_REQD:
            return result(True, status, "pam_acct_mgmt", expired=True)
        return result(status == PAM_SUCCESS, status, "pam_acct_mgmt")
    finally:
        lib.pam.pam_end(handle, status)
        del conv_cb
