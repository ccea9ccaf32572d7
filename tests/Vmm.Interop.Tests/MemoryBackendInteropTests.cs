using Vmm.Interop.Tests.Harness;
using Vmm.TestKit;

namespace Vmm.Interop.Tests;

/// <summary>
/// QEMU guests whose RAM is backed the ways QEMU users back it, on <c>./vmm serve blk</c>:
/// memory-backend-memfd (which QEMU seals), and memory-backend-file on /dev/shm and on hugetlbfs
/// (files that cannot be sealed: the back-end maps them under its SIGBUS guard). The default
/// harness (the other tests) uses memfd.
/// </summary>
public sealed class MemoryBackendInteropTests : InteropTest
{
    const int DiskMiB = 64;

    /// <summary>256 MiB of guest RAM in 2 MiB pages, and a few for QEMU's own use.</summary>
    const int HugePagesNeeded = 136;

    [Test]
    public async Task A_guest_with_sealed_memfd_memory_is_served_when_unsealed_memory_is_refused()
    {
        var backend = await StartVmmAsync("--memory", "strict");

        var guest = await RunGuestAsync(Options("memfd"), backend);

        AssertReadsAndWrites(guest, "memfd");
        Assert.That(backend.Log, Does.Not.Contain("SIGBUS guard"), "QEMU's memfd is sealed: nothing needed the guard");
    }

    [Test]
    public async Task A_guest_with_file_memory_on_dev_shm_is_served_under_the_guard()
    {
        var backend = await StartVmmAsync();
        var memory = Directory.CreateDirectory(Path.Combine("/dev/shm", $"vmm-guest-ram-{Guid.NewGuid():n}")).FullName;
        try
        {
            var guest = await RunGuestAsync(Options("shm") with { MemoryPath = memory }, backend);

            AssertReadsAndWrites(guest, "shm");
            Assert.That(backend.Log, Does.Contain("mapped under the SIGBUS guard"), "a file on /dev/shm cannot be sealed");
        }
        finally
        {
            Directory.Delete(memory, recursive: true);
        }
    }

    [Test]
    public async Task A_guest_with_hugetlbfs_memory_is_served_under_the_guard()
    {
        using var huge = HugeTlbFs.TryMount(HugePagesNeeded, out var reason);
        if (huge is null)
        {
            TestContext.Progress.WriteLine($"hugetlbfs guest not run: {reason}.");
            Assert.Ignore($"No huge pages for a 256 MiB guest here: {reason}.");
        }

        var backend = await StartVmmAsync();
        var guest = await RunGuestAsync(Options("huge") with { MemoryPath = huge.Path }, backend);

        AssertReadsAndWrites(guest, "huge");
        Assert.That(backend.Log, Does.Contain("mapped under the SIGBUS guard"), "a hugetlbfs file cannot be sealed");
    }

    async Task<BackendProcess> StartVmmAsync(params string[] extra)
    {
        var image = TestDisk.Create(PathIn("disk.img"), DiskMiB);
        return Own(await BackendProcess.StartVmmBlkAsync(image, PathIn("blk.sock"), extra: extra));
    }

    GuestOptions Options(string seed) => new() { Scenario = "blk-rw", Socket = PathIn("blk.sock"), OffsetMiB = 1, SizeMiB = 4, Seed = seed };

    void AssertReadsAndWrites(QemuGuest guest, string seed)
    {
        var expected = TestDisk.Md5(TestDisk.Pattern(seed, 4));
        Assert.That(guest.Require("write"), Is.EqualTo("ok"));
        Assert.That(guest.Require("md5"), Is.EqualTo(expected), "what the guest read back differs from what it wrote");
        Assert.That(TestDisk.Md5(PathIn("disk.img"), 1, 4), Is.EqualTo(expected), "the image does not hold what the guest wrote");
    }
}
