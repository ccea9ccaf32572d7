using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

/// <summary>
/// Owns one file descriptor from the moment it exists until it is closed. Every fd in the
/// project lives in one of these (or a subclass); no bare <c>int fd</c> crosses a method
/// boundary except inside Posix/ itself.
/// </summary>
public class SafeFileDescriptor : SafeHandle
{
    public SafeFileDescriptor() : base(new IntPtr(-1), ownsHandle: true)
    {
    }

    /// <summary>Takes ownership of <paramref name="fd"/> (it is closed when this handle is disposed).</summary>
    public SafeFileDescriptor(int fd, bool ownsHandle = true) : base(new IntPtr(-1), ownsHandle)
    {
        SetHandle(new IntPtr(fd));
    }

    public override bool IsInvalid => handle.ToInt64() < 0;

    /// <summary>
    /// The raw descriptor number, for system calls made inside Posix/. Callers outside must
    /// bracket its use with DangerousAddRef/DangerousRelease (or use <see cref="FdLease"/>).
    /// </summary>
    internal int DangerousFd => (int)handle.ToInt64();

    protected override bool ReleaseHandle() => Interop.Libc.Close((int)handle.ToInt64()) == 0;

    /// <summary>Keeps the descriptor open (ref-counted) while a raw number is in use.</summary>
    internal FdLease Lease() => new(this);
}

/// <summary>DangerousAddRef/DangerousRelease in a using block.</summary>
internal readonly ref struct FdLease
{
    private readonly SafeHandle _handle;
    private readonly bool _added;

    public FdLease(SafeFileDescriptor handle)
    {
        _handle = handle;
        _added = false;
        handle.DangerousAddRef(ref _added);
        Fd = (int)handle.DangerousGetHandle().ToInt64();
    }

    public int Fd { get; }

    public void Dispose()
    {
        if (_added)
        {
            _handle.DangerousRelease();
        }
    }
}
