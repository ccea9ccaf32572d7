using System.Diagnostics;

namespace Vmm.Interop.Tests.Harness;

/// <summary>A directory tree for virtio-fs tests, and what GNU sha256sum says about it.</summary>
public static class SharedTree
{
    /// <summary>
    /// Nested directories, an empty file, a file of several MiB (more than one request), names
    /// with spaces, a backslash, a newline and a carriage return, names that sort around '/'
    /// ("a", "a.b", "a/"), an empty directory, and what `find -type f` leaves out: a symlink and a FIFO.
    /// </summary>
    public static string Create(string root, int seed = 12)
    {
        var rng = new Random(seed);
        Directory.CreateDirectory(root);
        void File(string relative, int length)
        {
            var path = Path.Combine(root, relative);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            var bytes = new byte[length];
            rng.NextBytes(bytes);
            System.IO.File.WriteAllBytes(path, bytes);
        }

        File("a.txt", 6);
        File("a.b", 3);
        File("a/y", 100);
        File("empty", 0);
        File("sub dir/big file.bin", 5 * 1024 * 1024 + 123);
        File("sub dir/deeper/still deeper/x", 4096);
        File("back\\slash", 1);
        File("new\nline", 2);
        File("car\rret", 2);
        File("z/one MiB", 1024 * 1024);
        Directory.CreateDirectory(Path.Combine(root, "empty dir"));
        System.IO.File.CreateSymbolicLink(Path.Combine(root, "link"), "a.txt");
        Mkfifo(Path.Combine(root, "fifo"));
        return root;
    }

    /// <summary>
    /// What `find . -type f | LC_ALL=C sort | xargs sha256sum` prints in <paramref name="root"/>, run
    /// NUL-separated (-print0, sort -z, xargs -0) so that names with spaces and newlines survive.
    /// </summary>
    public static async Task<string> Sha256SumAsync(string root)
    {
        var psi = new ProcessStartInfo("/bin/bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = root };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("set -o pipefail; find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum");
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0)
            Assert.Fail($"sha256sum over {root} failed (exit {p.ExitCode}): {await stderr}");
        return await stdout;
    }

    /// <summary>Every path under <paramref name="root"/> with its size (directories as -1), to compare a tree before and after.</summary>
    public static string Snapshot(string root) =>
        string.Join('\n', Directory.EnumerateFileSystemEntries(root, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 })
            .Order(StringComparer.Ordinal)
            .Select(p => $"{Path.GetRelativePath(root, p)} {(Directory.Exists(p) ? -1 : new FileInfo(p).Length)}"));

    static void Mkfifo(string path)
    {
        using var p = Process.Start("mkfifo", [path]);
        p.WaitForExit();
        if (p.ExitCode != 0)
            Assert.Fail($"mkfifo {path} failed");
    }
}
