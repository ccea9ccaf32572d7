namespace Vmm.Core.Posix;

/// <summary>A system call failed; carries errno and the call's name.</summary>
public sealed class PosixException : IOException
{
    public PosixException(string call, int errno)
        : base($"{call} failed: {Interop.Describe(errno)}")
    {
        Call = call;
        Errno = errno;
    }

    public string Call { get; }

    public int Errno { get; }

    internal static PosixException FromLastError(string call) => new(call, Interop.LastErrno);
}
