using Mono.Unix.Native;
using Vmm.Core.Posix;

namespace Vmm.Core.Tests.Support;

/// <summary>Files a peer could hand over, for the tests: unsealable memfds, pipes, plain files.</summary>
internal static class TestFiles
{
    /// <summary>A memfd created without MFD_ALLOW_SEALING (it carries F_SEAL_SEAL): it can never be sealed, like a file on tmpfs.</summary>
    public static SafeFileDescriptor UnsealableMemfd(ulong size)
    {
        var fd = new SafeFileDescriptor(Interop.Libc.MemfdCreate("unsealable", Interop.Libc.MFD_CLOEXEC));
        Resize(fd, size);
        return fd;
    }

    /// <summary>A memfd that allows sealing but is not sealed yet.</summary>
    public static SafeFileDescriptor SealableMemfd(ulong size)
    {
        var fd = new SafeFileDescriptor(Interop.Libc.MemfdCreate("sealable", Interop.Libc.MFD_CLOEXEC | Interop.Libc.MFD_ALLOW_SEALING));
        Resize(fd, size);
        return fd;
    }

    /// <summary>ftruncate(2); the errno on failure, 0 on success.</summary>
    public static int TryResize(SafeFileDescriptor fd, ulong size)
    {
        bool added = false;
        fd.DangerousAddRef(ref added);
        try
        {
            return Syscall.ftruncate((int)fd.DangerousGetHandle(), (long)size) == 0 ? 0 : (int)NativeConvert.FromErrno(Stdlib.GetLastError());
        }
        finally
        {
            fd.DangerousRelease();
        }
    }

    public static void Resize(SafeFileDescriptor fd, ulong size) =>
        Assert.That(TryResize(fd, size), Is.Zero, "ftruncate");

    /// <summary>open(2) of <paramref name="path"/>, read-write.</summary>
    public static SafeFileDescriptor Open(string path, OpenFlags flags = OpenFlags.O_RDWR)
    {
        int fd = Syscall.open(path, flags | OpenFlags.O_CLOEXEC, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR);
        Assert.That(fd, Is.GreaterThanOrEqualTo(0), $"open {path}");
        return new SafeFileDescriptor(fd);
    }

    /// <summary>The repository's root (the directory holding ManagedVmm.sln).</summary>
    public static string RepoRoot
    {
        get
        {
            for (DirectoryInfo? d = new(AppContext.BaseDirectory); d is not null; d = d.Parent)
            {
                if (File.Exists(Path.Combine(d.FullName, "ManagedVmm.sln")))
                {
                    return d.FullName;
                }
            }

            throw new InvalidOperationException("ManagedVmm.sln not found above the test assembly.");
        }
    }
}
