using System.Diagnostics;
using System.Globalization;

namespace Vmm.TestKit;

/// <summary>
/// A private hugetlbfs mount with enough free huge pages reserved, for tests of memory that
/// QEMU users commonly back with huge pages. Needs root (to reserve pages and mount); where that
/// is impossible <see cref="TryMount"/> says why in one sentence, for the test's skip reason.
/// Dispose unmounts and gives back the pages it reserved.
/// </summary>
public sealed class HugeTlbFs : IDisposable
{
    private const string NrHugePages = "/proc/sys/vm/nr_hugepages";
    private readonly long _originalReservation;

    private HugeTlbFs(string path, long pageSize, long originalReservation)
    {
        Path = path;
        PageSize = pageSize;
        _originalReservation = originalReservation;
    }

    /// <summary>The mount point: files created here are backed by huge pages.</summary>
    public string Path { get; }

    /// <summary>The huge page size in bytes (Hugepagesize in /proc/meminfo).</summary>
    public long PageSize { get; }

    /// <summary>Mounts hugetlbfs with at least <paramref name="pages"/> free huge pages, or returns null and the reason.</summary>
    public static HugeTlbFs? TryMount(int pages, out string reason)
    {
        if (!File.ReadAllText("/proc/filesystems").Contains("hugetlbfs", StringComparison.Ordinal))
        {
            reason = "the kernel has no hugetlbfs";
            return null;
        }

        if (!File.ReadAllLines("/proc/self/status").Any(l => l.StartsWith("Uid:", StringComparison.Ordinal) && l.Split('\t', StringSplitOptions.RemoveEmptyEntries)[1] == "0"))
        {
            reason = "reserving huge pages and mounting hugetlbfs need root, and the tests do not run as root";
            return null;
        }

        long pageSize = MemInfo("Hugepagesize") * 1024;
        long original = long.Parse(File.ReadAllText(NrHugePages).Trim(), CultureInfo.InvariantCulture);
        long free = MemInfo("HugePages_Free");
        if (free < pages)
        {
            try
            {
                File.WriteAllText(NrHugePages, (original + pages - free).ToString(CultureInfo.InvariantCulture));
            }
            catch (IOException e)
            {
                reason = $"{NrHugePages} cannot be raised: {e.Message}";
                return null;
            }

            free = MemInfo("HugePages_Free");
            if (free < pages)
            {
                File.WriteAllText(NrHugePages, original.ToString(CultureInfo.InvariantCulture));
                reason = $"only {free} of the {pages} huge pages of {pageSize >> 10} KiB needed could be reserved (the machine's memory is too fragmented or too small)";
                return null;
            }
        }

        string path = Directory.CreateTempSubdirectory("vmm-huge-").FullName;
        string? failure = Run("mount", "-t", "hugetlbfs", "-o", $"pagesize={pageSize >> 10}K", "none", path);
        if (failure is not null)
        {
            Directory.Delete(path);
            File.WriteAllText(NrHugePages, original.ToString(CultureInfo.InvariantCulture));
            reason = $"mount -t hugetlbfs failed: {failure}";
            return null;
        }

        reason = "";
        return new HugeTlbFs(path, pageSize, original);
    }

    public void Dispose()
    {
        // A lazy unmount when a process (QEMU just killed, say) still holds a file there.
        if (Run("umount", Path) is not null)
        {
            Run("umount", "-l", Path);
        }
        try
        {
            Directory.Delete(Path);
        }
        catch (IOException)
        {
        }

        File.WriteAllText(NrHugePages, _originalReservation.ToString(CultureInfo.InvariantCulture));
    }

    private static long MemInfo(string key)
    {
        string line = File.ReadAllLines("/proc/meminfo").First(l => l.StartsWith(key + ":", StringComparison.Ordinal));
        return long.Parse(line[(key.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
    }

    /// <summary>Runs a tool; null when it succeeded, else what it printed.</summary>
    private static string? Run(string tool, params string[] args)
    {
        var start = new ProcessStartInfo(tool) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }

        using Process process = Process.Start(start)!;
        string output = process.StandardError.ReadToEnd() + process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return process.ExitCode == 0 ? null : output.Trim();
    }
}
