using static Vmm.Core.Posix.Interop.IoUring;

namespace Vmm.Core.Posix.IoUring;

/// <summary>Whether io_uring can be used here, and if not, why (for the one log line that says which engine runs).</summary>
/// <param name="Available">A ring could be set up and it supports every operation the disk engines use.</param>
/// <param name="Reason">Why not, as a sentence fragment (empty when available).</param>
public sealed record IoUringAvailability(bool Available, string Reason)
{
    public static readonly IoUringAvailability Yes = new(true, string.Empty);
}

/// <summary>Detects io_uring once per process: old kernels (ENOSYS), seccomp filters and the io_uring_disabled sysctl (EPERM).</summary>
public static class IoUringSupport
{
    /// <summary>The operations the io_uring disk engine submits.</summary>
    internal static ReadOnlySpan<byte> RequiredOperations => [IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_READ, IORING_OP_WRITE, IORING_OP_FSYNC, IORING_OP_FALLOCATE, IORING_OP_POLL_ADD];

    private const string DisabledSysctl = "/proc/sys/kernel/io_uring_disabled";

    private static readonly Lazy<IoUringAvailability> s_probe = new(ProbeOnce);

    /// <summary>The answer for this process (probed on first use).</summary>
    public static IoUringAvailability Availability => s_probe.Value;

    internal static IoUringAvailability ProbeOnce()
    {
        IoUringRing ring;
        try
        {
            ring = IoUringRing.Create(4, 8);
        }
        catch (PosixException e) when (e.Call == "io_uring_setup")
        {
            return new IoUringAvailability(false, Explain(e.Errno));
        }
        catch (PosixException e)
        {
            return new IoUringAvailability(false, e.Message);
        }

        using (ring)
        {
            return ring.Supports(RequiredOperations, out byte missing)
                ? IoUringAvailability.Yes
                : new IoUringAvailability(false, $"the kernel's io_uring lacks operation {missing}");
        }
    }

    private static string Explain(int errno)
    {
        string what = $"io_uring_setup failed: {Interop.Describe(errno)}";
        if (errno == Interop.Errno.ENOSYS)
        {
            return what + "; the kernel has no io_uring (before 5.1, or built without it)";
        }

        if (errno == Interop.Errno.EPERM)
        {
            string sysctl = ReadDisabledSysctl() is { } value ? $"kernel.io_uring_disabled={value}" : "no kernel.io_uring_disabled sysctl";
            return what + $"; a seccomp filter or the io_uring_disabled sysctl forbids it ({sysctl})";
        }

        return what;
    }

    private static string? ReadDisabledSysctl()
    {
        try
        {
            return File.Exists(DisabledSysctl) ? File.ReadAllText(DisabledSysctl).Trim() : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }
}
