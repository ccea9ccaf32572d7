using System.Globalization;
using System.Text.RegularExpressions;
using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// <c>vmm run --save FILE --live</c> (docs/migration.md) against a real back-end that logs the
/// pages it writes: qemu-storage-daemon (libvhost-user's VHOST_F_LOG_ALL) and <c>./vmm serve blk</c>.
/// The save starts in verify's read phase, so the back-end writes the data of every read into
/// guest buffers while memory is being copied: those pages must come from its dirty log. A
/// restore against a fresh back-end on the same image then finishes verify.
/// </summary>
public sealed partial class LiveSaveInteropTests : InteropTest
{
    // 16 MiB in 4 KiB blocks: 4096 writes, then 4096 reads that compare.
    const int DiskMiB = 16;
    const int Requests = 2 * DiskMiB * 256;

    [TestCase(BackendKind.StorageDaemon)]
    [TestCase(BackendKind.Vmm)]
    public async Task Live_save_in_the_read_phase_carries_the_backends_dirty_pages_and_the_restore_verifies(BackendKind kind)
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB);
        var snapshot = PathIn("snap");
        VmmResult saved;
        var first = await StartBlkAsync(kind, image, PathIn("a.sock"));
        saved = await VmmRun.RunAsync(
            "run", "--vhost-user", $"{PathIn("a.sock")},type=blk", "--memory", "32M", "--block-size", "4k", "--iodepth", "8",
            "--save", snapshot, "--save-after", "4500", "--live");
        await first.StopAsync();

        Assert.That(saved.ExitCode, Is.Zero, saved.Stderr);
        Assert.That(saved.Stdout, Does.Match($@"^save: verify paused after \d+ of {Requests} requests"));
        var live = LiveLine().Match(saved.Stderr);
        Assert.That(live.Success, Is.True, $"no live-save line in: {saved.Stderr}");
        long fromBackend = long.Parse(live.Groups["backend"].Value, CultureInfo.InvariantCulture);
        Assert.That(fromBackend, Is.GreaterThan(0), "the pre-copy rounds took pages from the back-end's dirty log: " + live.Value);
        long done = long.Parse(Regex.Match(saved.Stdout, @"paused after (\d+)").Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.That(done, Is.GreaterThanOrEqualTo(4500).And.LessThan(Requests));

        await StartBlkAsync(kind, image, PathIn("b.sock"));
        var restored = await VmmRun.RunAsync("run", "--vhost-user", $"{PathIn("b.sock")},type=blk", "--restore", snapshot);
        Assert.That(restored.ExitCode, Is.Zero, restored.Stderr);
        Assert.That(restored.Stdout, Does.Contain($"equal (resumed at request {done} of {Requests})"));
    }

    [GeneratedRegex(@"live save: (?<rounds>\d+) pre-copy round\(s\) of (?<pages>[\d, ]+) pages.*?, (?<backend>\d+) of them from back-end dirty logs; stopped for (?<ms>\d+) ms, copying (?<stop>\d+) pages at the stop")]
    private static partial Regex LiveLine();
}
