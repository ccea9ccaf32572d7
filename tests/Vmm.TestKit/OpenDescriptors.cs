namespace Vmm.TestKit;

/// <summary>
/// The descriptors that vhost-user code creates or receives: sockets, eventfds and other
/// anonymous inodes, memfds and pipes (from /proc/self/fd, proc(5)). Regular files the runtime
/// opens for itself, such as the symbol files it reads to render a stack trace, are left out,
/// so a leak check does not fail when an exception is first formatted.
/// </summary>
public static class OpenDescriptors
{
    public static int Count() => Describe().Length;

    /// <summary>"fd->target" for each counted descriptor, for failure messages.</summary>
    public static string[] Describe() => Directory.GetFileSystemEntries("/proc/self/fd")
        .Select(Target)
        .Where(t => t.Contains("->socket:", StringComparison.Ordinal) || t.Contains("->anon_inode:", StringComparison.Ordinal)
            || t.Contains("->/memfd:", StringComparison.Ordinal) || t.Contains("->pipe:", StringComparison.Ordinal))
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
