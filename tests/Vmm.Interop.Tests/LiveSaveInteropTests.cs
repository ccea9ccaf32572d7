using System.Globalization;
using System.Text.RegularExpressions;
using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// <c>vmm run --save FILE --live</c> (docs/migration.md) against a real back-end that logs the
/// pages it writes: qemu-storage-daemon (libvhost-user's VHOST_F_LOG_ALL) and <c>./vmm serve blk</c>.
/// The save starts in verify's read phase, so the back-end writes the data of every read into
/// guest buffers while memory is being copied: those pages must come from its dirty log (the
/// VMM's own tracking cannot see them). A restore against a second back-end of the same kind on
/// the same image then finishes verify, after a live save and after a plain one.
/// </summary>
public sealed partial class LiveSaveInteropTests : InteropTest
{
    // 64 MiB in 4 KiB blocks: 16384 writes, then 16384 reads that compare. The save starts
    // early in the read phase, so the back-end writes guest buffers for a good while after it:
    // a short workload on a quiet machine ends before a pre-copy round can see them.
    const int DiskMiB = 64;
    const int Requests = 2 * DiskMiB * 256;
    const int SaveAfter = Requests / 2 + 1000;

    [TestCase(BackendKind.Vmm)]
    [TestCase(BackendKind.StorageDaemon)]
    public async Task Live_save_carries_the_backends_dirty_pages_and_the_restore_against_a_second_backend_verifies(BackendKind kind)
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB);
        long done = await LiveSaveAsync(kind, image);
        await RestoreAsync(kind, image, done);
    }

    /// <remarks>
    /// qemu-storage-daemon (libvhost-user) writes avail_event only when it takes a buffer, so the
    /// restored driver kicks only if the ring's memory still holds what the first daemon wrote
    /// there (docs/save-restore.md, "How a restore rebuilds the VM").
    /// </remarks>
    [TestCase(1000)] // in the write phase
    [TestCase(SaveAfter)] // in the read phase
    public async Task A_plain_save_against_qemu_storage_daemon_restores_against_a_second_one_and_verifies(int saveAfter)
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB);
        var saved = await SaveAsync(BackendKind.StorageDaemon, image, saveAfter);
        Assert.That(saved.ExitCode, Is.Zero, saved.Stderr);
        Assert.That(saved.Stdout, Does.Match($@"^save: verify paused after {saveAfter} of {Requests} requests"));
        await RestoreAsync(BackendKind.StorageDaemon, image, saveAfter);
    }

    /// <summary>Runs verify against a back-end of <paramref name="kind"/> on <paramref name="image"/> and saves to snap after <paramref name="saveAfter"/> requests.</summary>
    private async Task<VmmResult> SaveAsync(BackendKind kind, string image, int saveAfter, params string[] extra)
    {
        var backend = await StartBlkAsync(kind, image, PathIn("a.sock"));
        string[] args =
        [
            "run", "--vhost-user", $"{PathIn("a.sock")},type=blk", "--memory", "32M", "--block-size", "4k", "--iodepth", "4",
            "--save", PathIn("snap"), "--save-after", saveAfter.ToString(CultureInfo.InvariantCulture), .. extra,
        ];
        var saved = await VmmRun.RunAsync(args);
        await backend.StopAsync();
        return saved;
    }

    /// <summary>Restores the snapshot against a fresh back-end of <paramref name="kind"/> on the same image; verify must finish equal.</summary>
    private async Task RestoreAsync(BackendKind kind, string image, long done)
    {
        await StartBlkAsync(kind, image, PathIn("b.sock"));
        var restored = await VmmRun.RunAsync("run", "--vhost-user", $"{PathIn("b.sock")},type=blk", "--restore", PathIn("snap"));
        Assert.That(restored.ExitCode, Is.Zero, restored.Stderr);
        Assert.That(restored.Stdout, Does.Contain($"equal (resumed at request {done} of {Requests})"));
    }

    /// <summary>Saves with --live in verify's read phase; returns the requests done. The pre-copy must have taken pages from the back-end's log.</summary>
    private async Task<long> LiveSaveAsync(BackendKind kind, string image)
    {
        var saved = await SaveAsync(kind, image, SaveAfter, "--live");
        Assert.That(saved.ExitCode, Is.Zero, saved.Stderr);
        Assert.That(saved.Stdout, Does.Match($@"^save: verify paused after \d+ of {Requests} requests"));
        var live = LiveLine().Match(saved.Stderr);
        Assert.That(live.Success, Is.True, $"no live-save line in: {saved.Stderr}");
        Assert.That(int.Parse(live.Groups["rounds"].Value, CultureInfo.InvariantCulture), Is.GreaterThanOrEqualTo(1), live.Value);
        long fromBackend = long.Parse(live.Groups["backend"].Value, CultureInfo.InvariantCulture);
        Assert.That(fromBackend, Is.GreaterThan(0), "the pre-copy rounds took pages from the back-end's dirty log: " + live.Value);
        long done = long.Parse(Regex.Match(saved.Stdout, @"paused after (\d+)").Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.That(done, Is.GreaterThanOrEqualTo(SaveAfter).And.LessThan(Requests));
        return done;
    }

    [GeneratedRegex(@"live save: (?<rounds>\d+) pre-copy round\(s\) of (?<pages>[\d, ]+) pages.*?, (?<backend>\d+) of them from back-end dirty logs; stopped for (?<ms>\d+) ms, copying (?<stop>\d+) pages at the stop")]
    private static partial Regex LiveLine();
}
