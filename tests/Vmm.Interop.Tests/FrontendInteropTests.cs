using System.Buffers.Binary;
using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// Our front-end, <c>./vmm run --vhost-user</c>, against a third-party back-end:
/// qemu-storage-daemon exporting a raw image (the command line of docs/serving-qemu.md and the harness). Fails, never
/// skips, when qemu-storage-daemon is not installed.
/// </summary>
public sealed class FrontendInteropTests : InteropTest
{
    const int DiskMiB = 64;

    [Test]
    public async Task Checksum_through_qemu_storage_daemon_equals_the_sha256_of_the_image()
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB, prefillMiB: 16, seed: 7);
        var expected = TestDisk.Sha256(image);
        var backend = await StartBlkAsync(BackendKind.StorageDaemon, image, PathIn("blk.sock"));

        var r = await RunVmmAsync("run", "--vhost-user", $"{backend.Socket},type=blk", "--workload", "checksum");

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + "\n" + backend.Describe());
        Assert.That(r.Stdout, Is.EqualTo($"sha256 {expected}\n"));
        Assert.That(backend.HasExited, Is.False, "qemu-storage-daemon exited after our front-end disconnected");
    }

    [TestCase]
    [TestCase("--interrupts", "function")]
    [TestCase("--no-event-idx", "--no-indirect")]
    public async Task Verify_through_qemu_storage_daemon_leaves_the_pattern_on_the_image(params string[] extra)
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB, prefillMiB: 4, seed: 8);
        var backend = await StartBlkAsync(BackendKind.StorageDaemon, image, PathIn("blk.sock"));

        var r = await RunVmmAsync(["run", "--vhost-user", $"{backend.Socket},type=blk", "--workload", "verify", .. extra]);

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + "\n" + backend.Describe());
        Assert.That(r.Stdout, Does.StartWith("verify:").And.Contain("equal"));
        // docs/cli.md: the 8-byte word at offset o holds (o / 8) * 0x9E3779B97F4A7C15 + 0x0123456789ABCDEF.
        var bytes = File.ReadAllBytes(image);
        Assert.That(bytes, Has.Length.EqualTo(DiskMiB * TestDisk.MiB));
        for (var o = 0; o < bytes.Length; o += 8)
        {
            var want = unchecked(((ulong)(o / 8) * 0x9E3779B97F4A7C15UL) + 0x0123456789ABCDEFUL);
            if (BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(o)) != want)
                Assert.Fail($"byte {o} of the image does not hold the verify pattern");
        }
    }

    [Test]
    public async Task Two_queues_through_qemu_storage_daemon()
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB, prefillMiB: 16, seed: 9);
        var expected = TestDisk.Sha256(image);
        var backend = await StartBlkAsync(BackendKind.StorageDaemon, image, PathIn("blk.sock"), queues: 2);

        var probe = await RunVmmAsync("run", "--vhost-user", $"{backend.Socket},type=blk,queues=2", "--workload", "probe");
        var checksum = await RunVmmAsync("run", "--vhost-user", $"{backend.Socket},type=blk,queues=2", "--workload", "checksum");
        var bench = await RunVmmAsync("run", "--vhost-user", $"{backend.Socket},type=blk,queues=2", "--workload", "bench", "--seconds", "1", "--rw", "randread", "--json");

        Assert.That(probe.ExitCode, Is.Zero, probe.Stderr);
        Assert.That(probe.Stdout, Does.Contain("queues              2 (q0:"));
        Assert.That(probe.Stdout, Does.Contain("num_queues          2"));
        Assert.That(checksum.Stdout, Is.EqualTo($"sha256 {expected}\n"), checksum.Stderr);
        Assert.That(bench.ExitCode, Is.Zero, bench.Stderr);
        Assert.That(bench.Stdout, Does.Contain("\"queues\":2").And.Contain("\"errors\":0"));
    }

    [Test]
    public async Task Probe_prints_qemu_storage_daemons_features_and_config()
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB, prefillMiB: 0);
        var backend = await StartBlkAsync(BackendKind.StorageDaemon, image, PathIn("blk.sock"));

        var r = await RunVmmAsync("run", "--vhost-user", $"{backend.Socket},type=blk", "--workload", "probe");

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + "\n" + backend.Describe());
        // What qemu-storage-daemon 7.2 offers and reports for a 64 MiB image.
        Assert.That(r.Stdout, Does.Contain("back-end features   0x0000000175007e46 "));
        Assert.That(r.Stdout, Does.Contain("LOG_ALL").And.Contain("PROTOCOL_FEATURES"));
        // Of its 0x8f2b, what both sides implement: MQ, REPLY_ACK, BACKEND_REQ (qsd took our
        // SET_BACKEND_REQ_FD), CONFIG, CONFIGURE_MEM_SLOTS.
        Assert.That(r.Stdout, Does.Contain("protocol features   0x822b negotiated (MQ, LOG_SHMFD, REPLY_ACK, BACKEND_REQ, CONFIG, CONFIGURE_MEM_SLOTS)"));
        Assert.That(r.Stdout, Does.Contain("capacity            131072 sectors (67108864 bytes)"));
        Assert.That(r.Stdout, Does.Contain("seg_max             126"));
        Assert.That(r.Stdout, Does.Contain("blk_size            512"));
        Assert.That(r.Stdout, Does.Contain("num_queues          1"));
        Assert.That(r.Stdout, Does.Contain("max_discard_sectors 32768"));
        Assert.That(r.Stdout, Does.Contain("max_write_zeroes    32768 sectors"));
        Assert.That(r.Stdout, Does.Contain("status              0x0f"));
    }

    static Task<VmmResult> RunVmmAsync(params string[] args) => VmmRun.RunAsync(args);
}
