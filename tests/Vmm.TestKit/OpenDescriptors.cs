namespace Vmm.TestKit;

/// <summary>
/// The descriptors that vhost-user code creates or receives: sockets, eventfds and memfds
/// (from /proc/self/fd, proc(5)). What the runtime opens for itself on first use is left out,
/// so a leak check does not fail when, say, an exception is first formatted: symbol files,
/// its epoll instance, its signal and process pipes, and its "doublemapper" memfd.
/// </summary>
public static class OpenDescriptors
{
    public static int Count() => Describe().Length;

    /// <summary>"fd->target" for each counted descriptor, for failure messages.</summary>
    public static string[] Describe() => Directory.GetFileSystemEntries("/proc/self/fd")
        .Select(Target)
        .Where(t => t.Contains("->socket:", StringComparison.Ordinal) || t.Contains("->anon_inode:[eventfd]", StringComparison.Ordinal)
            || (t.Contains("->/memfd:", StringComparison.Ordinal) && !t.Contains("doublemapper", StringComparison.Ordinal)))
        .ToArray();

    private static string Target(string entry)
    {
        try
        {
            return Path.GetFileName(entry) + "->" + (new FileInfo(entry).LinkTarget ?? "?");
        }
        catch (IOException)
        {
            // Closed between the listing and the read: it is gone, which is what a leak check wants.
            return Path.GetFileName(entry) + "->closed";
        }
    }
}
