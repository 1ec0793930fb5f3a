"""Errors the agent reports. Codes match :mod:`sandlot.errors`, which re-raises them host-side."""

import errno


class AgentError(Exception):
    def __init__(self, code, message, **details):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.details = details


_ERRNO_CODES = {
    errno.ENOENT: "file_not_found",
    errno.EEXIST: "file_exists",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied",
    errno.EISDIR: "is_a_directory",
    errno.ENOTDIR: "not_a_directory",
    errno.ENOTEMPTY: "directory_not_empty",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
}


def error_payload(exc):
    if isinstance(exc, AgentError):
        payload = {"code": exc.code, "message": exc.message}
        payload.update(exc.details)
        return payload
    if isinstance(exc, OSError):
        code = _ERRNO_CODES.get(exc.errno, "file_error")
        message = exc.strerror or str(exc)
        if exc.filename is not None:
            message = "%s: %s" % (message, exc.filename)
        return {"code": code, "message": message}
    return {"code": "agent_error", "message": "%s: %s" % (type(exc).__name__, exc)}
