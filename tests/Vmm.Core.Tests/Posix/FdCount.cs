namespace Vmm.Core.Tests.Posix;

internal static class FdCount
{
    /// <summary>Open descriptors of this process (entries of /proc/self/fd, proc(5)).</summary>
    public static int Current() => Directory.GetFileSystemEntries("/proc/self/fd").Length;
}
