namespace Vmm.TestKit;

/// <summary>
/// The threads that vhost-user code starts for a session or a ring, by name (/proc/self/task/*/comm,
/// proc(5); names are cut to 15 characters): queue workers ("vq-..."), state transfers
/// ("vu-..."). Pool threads and the runtime's own are left out: their number moves on its own.
/// </summary>
public static class OpenThreads
{
    private static readonly string[] s_prefixes = ["vq-", "vu-"];

    public static int Count() => Describe().Length;

    /// <summary>"tid:name" of each counted thread, for failure messages.</summary>
    public static string[] Describe() => Directory.GetDirectories("/proc/self/task")
        .Select(task => (Id: Path.GetFileName(task), Name: Comm(task)))
        .Where(t => t.Name is not null && s_prefixes.Any(p => t.Name.StartsWith(p, StringComparison.Ordinal)))
        .Select(t => $"{t.Id}:{t.Name}")
        .ToArray();

    private static string? Comm(string task)
    {
        try
        {
            return File.ReadAllText(Path.Combine(task, "comm")).Trim();
        }
        catch (IOException)
        {
            // The thread ended between the listing and the read.
            return null;
        }
    }
}
