using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// QEMU 7.2 with a Linux guest as the vhost-user-blk front-end. Each test runs against
/// qemu-storage-daemon (which checks the harness and the guest tooling on their own) and
/// against our back-end, <c>./vmm serve blk</c>.
/// </summary>
public sealed class BlkInteropTests : InteropTest
{
    const int DiskMiB = 64;

    [TestCase(BackendKind.StorageDaemon)]
    [TestCase(BackendKind.Vmm)]
    public async Task Guest_writes_and_reads_back_what_is_in_the_image(BackendKind kind)
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB);
        var before = TestDisk.Md5(image, 1, 4);
        var backend = await StartBlkAsync(kind, image, PathIn("blk.sock"));

        var guest = await RunGuestAsync(new GuestOptions { Scenario = "blk-rw", Socket = PathIn("blk.sock"), OffsetMiB = 1, SizeMiB = 4, Seed = "rw" }, backend);

        var expected = TestDisk.Md5(TestDisk.Pattern("rw", 4));
        Assert.That(guest.Require("size"), Is.EqualTo((DiskMiB * TestDisk.MiB / 512).ToString()), "capacity in 512-byte sectors");
        Assert.That(guest.Require("ro"), Is.EqualTo("0"), "a writable export must not be read-only");
        Assert.That(guest.Require("before"), Is.EqualTo(before), "what the guest read before writing differs from the image");
        Assert.That(guest.Require("pattern"), Is.EqualTo(expected), "the guest's pattern generator");
        Assert.That(guest.Require("write"), Is.EqualTo("ok"));
        Assert.That(guest.Require("md5"), Is.EqualTo(expected), "what the guest read back differs from what it wrote");
        Assert.That(TestDisk.Md5(image, 1, 4), Is.EqualTo(expected), "the image on the host does not hold what the guest wrote");
    }

    [TestCase(BackendKind.StorageDaemon)]
    [TestCase(BackendKind.Vmm)]
    public async Task One_MiB_direct_and_buffered_io_over_scattered_pages_with_queue_size_128(BackendKind kind)
    {
        // QEMU's vhost-user-blk-pci default queue size; Linux then sends requests of as many
        // segments as seg_max allows, each in one indirect table.
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB);
        var backend = await StartBlkAsync(kind, image, PathIn("blk.sock"));

        var guest = await RunGuestAsync(new GuestOptions
        {
            Scenario = "blk-big", Socket = PathIn("blk.sock"), QueueSize = 128, OffsetMiB = 8, SizeMiB = 8, Seed = "big",
        }, backend);

        var expected = TestDisk.Md5(TestDisk.Pattern("big", 8));
        var expectedB = TestDisk.Md5(TestDisk.Pattern("big-b", 8));
        Assert.That(int.Parse(guest.Require("scattered")), Is.GreaterThan(4000), "the guest could not scatter its free memory");
        Assert.That(guest.Require("pattern"), Is.EqualTo(expected), "the guest's pattern generator");
        Assert.That(guest.Require("write.direct"), Is.EqualTo("ok"), "1 MiB O_DIRECT writes failed");
        Assert.That(guest.Require("md5.direct"), Is.EqualTo(expected), "1 MiB O_DIRECT reads return other data");
        Assert.That(guest.Require("md5.buffered"), Is.EqualTo(expected), "1 MiB buffered reads return other data");
        Assert.That(guest.Require("pattern.b"), Is.EqualTo(expectedB));
        Assert.That(guest.Require("write.buffered"), Is.EqualTo("ok"), "1 MiB buffered writes failed");
        Assert.That(guest.Require("md5.b"), Is.EqualTo(expectedB), "what the guest wrote through the page cache reads back differently");
        Assert.That(TestDisk.Md5(image, 8, 8), Is.EqualTo(expected), "the image does not hold the direct writes");
        Assert.That(TestDisk.Md5(image, 16, 8), Is.EqualTo(expectedB), "the image does not hold the buffered writes");
        Assert.That(backend.Log, Does.Not.Contain("needs a reset"), "the device faulted");
    }

    /// <summary>Two CPUs writing through two queues; our back-end also with <c>--cache none</c> (O_DIRECT, io_uring on this disk).</summary>
    [TestCase(BackendKind.StorageDaemon, null)]
    [TestCase(BackendKind.Vmm, null)]
    [TestCase(BackendKind.Vmm, "none")]
    public async Task Two_queues_on_two_cpus(BackendKind kind, string? cache)
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB);
        var backend = await StartBlkAsync(kind, image, PathIn("blk.sock"), queues: 2, vmmArgs: cache is null ? null : ["--cache", cache]);

        var guest = await RunGuestAsync(new GuestOptions
        {
            Scenario = "blk-mq", Socket = PathIn("blk.sock"), Queues = 2, Cpus = 2, OffsetMiB = 2, SizeMiB = 2, Seed = "mq",
        }, backend);

        Assert.That(guest.Require("cpus"), Is.EqualTo("2"));
        Assert.That(guest.Require("queues"), Is.EqualTo("2"), "hardware queues the guest sees");
        for (var cpu = 0; cpu < 2; cpu++)
        {
            var expected = TestDisk.Md5(TestDisk.Pattern($"mq-{cpu}", 2));
            Assert.That(guest.Marker($"write.cpu{cpu}"), Is.Null, $"the write from CPU {cpu} failed");
            Assert.That(guest.Require($"pattern.cpu{cpu}"), Is.EqualTo(expected));
            Assert.That(guest.Require($"md5.cpu{cpu}"), Is.EqualTo(expected), $"CPU {cpu} read back other data");
            Assert.That(TestDisk.Md5(image, 2 + cpu * 2, 2), Is.EqualTo(expected), $"the image does not hold CPU {cpu}'s data");
            Assert.That(guest.Marker("debugfs"), Is.Null, "the guest could not mount debugfs");
            Assert.That(long.Parse(guest.Require($"run.hctx{cpu}")), Is.GreaterThan(0), $"hardware queue {cpu} was never run");
        }

        if (cache is not null)
            Assert.That(backend.Log, Does.Contain($"cache={cache}"), "the back-end opened the image as asked");
    }

    [TestCase(BackendKind.StorageDaemon)]
    [TestCase(BackendKind.Vmm)]
    public async Task Read_only_export_rejects_writes(BackendKind kind)
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB);
        var sha = TestDisk.Sha256(image);
        var before = TestDisk.Md5(image, 1, 4);
        var backend = await StartBlkAsync(kind, image, PathIn("blk.sock"), readOnly: true);

        var guest = await RunGuestAsync(new GuestOptions { Scenario = "blk-ro", Socket = PathIn("blk.sock"), OffsetMiB = 1, SizeMiB = 4, Seed = "ro" }, backend);

        Assert.That(guest.Require("ro"), Is.EqualTo("1"), "the device should offer VIRTIO_BLK_F_RO");
        Assert.That(guest.Require("before"), Is.EqualTo(before), "reads from a read-only export");
        Assert.That(guest.Require("write"), Is.EqualTo("fail"), "a write to a read-only export succeeded");
        Assert.That(guest.Require("md5"), Is.EqualTo(before), "the guest reads other data after the failed write");
        Assert.That(TestDisk.Sha256(image), Is.EqualTo(sha), "the read-only image changed");
    }

    [TestCase(BackendKind.StorageDaemon)]
    [TestCase(BackendKind.Vmm)]
    public async Task Backend_survives_a_killed_frontend_and_serves_the_next(BackendKind kind)
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB);
        var backend = await StartBlkAsync(kind, image, PathIn("blk.sock"));

        // First front-end: writes two alternating patterns in a loop, killed (SIGKILL) mid-write.
        var first = await StartGuestAsync(new GuestOptions { Scenario = "blk-loop", Socket = PathIn("blk.sock"), OffsetMiB = 4, SizeMiB = 1, Seed = "k" });
        await first.WaitForMarkerAsync("writing", "4");
        await first.KillAsync();
        await Task.Delay(TimeSpan.FromSeconds(1));
        Assert.That(backend.HasExited, Is.False, $"the back-end exited when its front-end was killed:\n{backend.Describe()}");

        // Every 4 KiB block of the area holds one of the two patterns, whole.
        var area = TestDisk.Read(image, 4, 1);
        var a = TestDisk.Pattern("k-a", 1);
        var b = TestDisk.Pattern("k-b", 1);
        for (var off = 0; off < area.Length; off += 4096)
        {
            var block = area.AsSpan(off, 4096);
            Assert.That(block.SequenceEqual(a.AsSpan(off, 4096)) || block.SequenceEqual(b.AsSpan(off, 4096)), Is.True,
                $"the block at {off} of the area written when QEMU was killed holds neither pattern");
        }
        var afterKill = TestDisk.Md5(area);

        // Second front-end on the same, still running, back-end.
        var second = await RunGuestAsync(new GuestOptions { Scenario = "blk-rw", Socket = PathIn("blk.sock"), OffsetMiB = 4, SizeMiB = 1, Seed = "after" }, backend);

        var expected = TestDisk.Md5(TestDisk.Pattern("after", 1));
        Assert.That(second.Require("before"), Is.EqualTo(afterKill), "the next front-end reads other data than the image holds");
        Assert.That(second.Require("write"), Is.EqualTo("ok"));
        Assert.That(second.Require("md5"), Is.EqualTo(expected));
        Assert.That(TestDisk.Md5(image, 4, 1), Is.EqualTo(expected), "the image does not hold what the next front-end wrote");
        Assert.That(backend.HasExited, Is.False, "the back-end exited after serving the second front-end");
    }
}
