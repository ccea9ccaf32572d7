using System.Runtime.InteropServices;
using Mono.Unix.Native;
using Vmm.Core.Posix;

namespace Vmm.VhostUser.Tests.Channel;

/// <summary>A memfd for tests, mapped MAP_SHARED; Mono.Posix.NETStandard 1.0.0 lacks memfd_create.</summary>
internal static partial class TestMemfd
{
    private const uint MFD_CLOEXEC = 0x1; // memfd_create(2)
    private const uint MFD_ALLOW_SEALING = 0x2;

    /// <summary>
    /// A memfd of <paramref name="size"/> bytes, never sealed here. Without
    /// <paramref name="sealable"/> it can never be sealed (F_SEAL_SEAL from the start), like a file on tmpfs.
    /// </summary>
    public static SafeFileDescriptor Create(string name, long size, bool sealable = false)
    {
        int fd = memfd_create(name, MFD_CLOEXEC | (sealable ? MFD_ALLOW_SEALING : 0));
        if (fd < 0)
        {
            throw new IOException($"memfd_create failed: errno {Marshal.GetLastPInvokeError()}");
        }

        var handle = new SafeFileDescriptor(fd);
        if (Syscall.ftruncate(fd, size) != 0)
        {
            handle.Dispose();
            throw new IOException($"ftruncate failed: errno {Marshal.GetLastPInvokeError()}");
        }

        return handle;
    }

    public static IntPtr Map(SafeFileDescriptor fd, long size)
    {
        bool added = false;
        fd.DangerousAddRef(ref added);
        try
        {
            IntPtr p = Syscall.mmap(
                IntPtr.Zero, (ulong)size, MmapProts.PROT_READ | MmapProts.PROT_WRITE, MmapFlags.MAP_SHARED,
                (int)fd.DangerousGetHandle(), 0);
            if (p == new IntPtr(-1))
            {
                throw new IOException($"mmap failed: errno {Marshal.GetLastPInvokeError()}");
            }

            return p;
        }
        finally
        {
            fd.DangerousRelease();
        }
    }

    public static void Unmap(IntPtr address, long size) => Syscall.munmap(address, (ulong)size);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int memfd_create(string name, uint flags);
}
