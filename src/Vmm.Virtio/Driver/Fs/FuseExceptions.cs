using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Driver.Fs;

/// <summary>What went wrong on a FUSE session.</summary>
public abstract class FuseException : Exception
{
    protected FuseException(string message, Exception? inner = null) : base(message, inner)
    {
    }
}

/// <summary>The device answered a request with an error (a negated errno in fuse_out_header.error).</summary>
public sealed class FuseErrorException : FuseException
{
    public FuseErrorException(FuseOpcode opcode, int errno, string? subject = null)
        : base($"{opcode}{(subject is null ? string.Empty : $" {subject}")} failed: {Fs.Errno.Name(errno)}.")
    {
        Opcode = opcode;
        Errno = errno;
    }

    public FuseOpcode Opcode { get; }

    /// <summary>The positive errno (ENOENT = 2, ...).</summary>
    public int Errno { get; }
}

/// <summary>
/// The device broke the protocol (a short, oversized or inconsistent reply, a wrong unique id,
/// an impossible attribute). The session cannot be trusted after it and refuses further requests.
/// </summary>
public sealed class FuseProtocolException : FuseException
{
    public FuseProtocolException(string message, Exception? inner = null) : base(message, inner)
    {
    }
}

/// <summary>
/// The session is gone: the device did not answer in time, its queue failed, or its back-end went
/// away. FUSE state (node ids, open file handles) lives in the device; a new back-end does not
/// have it, so the session is not resumed.
/// </summary>
public sealed class FuseSessionLostException : FuseException
{
    public FuseSessionLostException(string message, Exception? inner = null) : base(message, inner)
    {
    }
}

/// <summary>Linux errno names for messages (asm-generic/errno-base.h and errno.h).</summary>
public static class Errno
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EIO = 5;
    public const int EBADF = 9;
    public const int EACCES = 13;
    public const int EEXIST = 17;
    public const int ENOTDIR = 20;
    public const int EISDIR = 21;
    public const int EINVAL = 22;
    public const int ENOSPC = 28;
    public const int EROFS = 30;
    public const int ENAMETOOLONG = 36;
    public const int ENOSYS = 38;
    public const int ENOTEMPTY = 39;

    private static readonly Dictionary<int, string> Names = new()
    {
        [EPERM] = "EPERM",
        [ENOENT] = "ENOENT",
        [EIO] = "EIO",
        [EBADF] = "EBADF",
        [EACCES] = "EACCES",
        [EEXIST] = "EEXIST",
        [ENOTDIR] = "ENOTDIR",
        [EISDIR] = "EISDIR",
        [EINVAL] = "EINVAL",
        [ENOSPC] = "ENOSPC",
        [EROFS] = "EROFS",
        [ENAMETOOLONG] = "ENAMETOOLONG",
        [ENOSYS] = "ENOSYS",
        [ENOTEMPTY] = "ENOTEMPTY",
    };

    /// <summary>"ENOENT (2)", or "errno 71" for the ones without a name here.</summary>
    public static string Name(int errno) => Names.TryGetValue(errno, out string? name) ? $"{name} ({errno})" : $"errno {errno}";
}
