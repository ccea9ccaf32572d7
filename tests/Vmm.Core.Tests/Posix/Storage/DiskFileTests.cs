using System.Numerics;
using System.Runtime.InteropServices;
using NUnit.Framework;
using Vmm.Core.Posix.Storage;
using Vmm.TestKit;

namespace Vmm.Core.Tests.Posix.Storage;

[TestFixture]
public sealed unsafe class DiskFileTests
{
    [Test]
    public void A_file_through_the_page_cache_has_512_byte_blocks_and_no_memory_alignment()
    {
        string path = TempFile(64 * 1024);
        try
        {
            using DiskFile disk = DiskFile.Open(path, readOnly: false, direct: false);
            Assert.Multiple(() =>
            {
                Assert.That(disk.IsBlockDevice, Is.False);
                Assert.That(disk.Direct, Is.False);
                Assert.That(disk.Length, Is.EqualTo(64 * 1024));
                Assert.That(disk.LogicalBlockSize, Is.EqualTo(512));
                Assert.That(disk.MemoryAlignment, Is.EqualTo(1));
                Assert.That(BitOperations.IsPow2(disk.PhysicalBlockSize) && disk.PhysicalBlockSize >= 512, Is.True, $"physical {disk.PhysicalBlockSize}");
            });
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Test]
    public void A_file_under_O_DIRECT_takes_its_alignment_from_the_file_system()
    {
        string path = TempFile(64 * 1024);
        try
        {
            using DiskFile disk = DiskFile.Open(path, readOnly: false, direct: true);
            TestContext.Out.WriteLine($"{path}: logical {disk.LogicalBlockSize}, memory {disk.MemoryAlignment}, physical {disk.PhysicalBlockSize}");
            Assert.That(disk.Direct, Is.True);
            Assert.That(disk.LogicalBlockSize, Is.AnyOf(512u, 1024u, 2048u, 4096u));
            Assert.That(disk.MemoryAlignment, Is.InRange(1u, 4096u));
            Assert.That(disk.PhysicalBlockSize, Is.GreaterThanOrEqualTo(disk.LogicalBlockSize));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Test]
    public void Opening_what_is_not_a_disk_fails_with_a_sentence()
    {
        Assert.That(() => DiskFile.Open(Path.Combine(Path.GetTempPath(), $"missing-{Guid.NewGuid():N}"), false, false), Throws.InstanceOf<FileNotFoundException>());
        Assert.That(() => DiskFile.Open(Path.GetTempPath(), false, false), Throws.InstanceOf<IOException>().With.Message.Contains("neither a regular file nor a block device"));
    }

    [TestCase(512)]
    [TestCase(4096)]
    public void A_block_device_is_sized_by_ioctl_and_claimed_exclusively(int sectorSize)
    {
        using LoopDevice loop = RequireLoop(8 << 20, sectorSize);
        using (DiskFile disk = DiskFile.Open(loop.Path, readOnly: false, direct: true))
        {
            Assert.Multiple(() =>
            {
                Assert.That(disk.IsBlockDevice, Is.True);
                Assert.That(disk.Length, Is.EqualTo(8 << 20));
                Assert.That(disk.LogicalBlockSize, Is.EqualTo(sectorSize));
                Assert.That(disk.PhysicalBlockSize, Is.GreaterThanOrEqualTo(disk.LogicalBlockSize));
                Assert.That(disk.MemoryAlignment, Is.InRange(1u, (uint)sectorSize));
            });

            Assert.That(
                () => DiskFile.Open(loop.Path, readOnly: true, direct: false),
                Throws.InstanceOf<IOException>().With.Message.Contains("exclusively"),
                "a second exclusive opener is refused while the first holds the device");
        }

        using DiskFile again = DiskFile.Open(loop.Path, readOnly: true, direct: false);
        Assert.That(again.IsBlockDevice, Is.True, "closing releases the claim");
    }

    [TestCase(IoEngineKind.Inline)]
    [TestCase(IoEngineKind.Threads)]
    [TestCase(IoEngineKind.IoUring)]
    public void Discard_and_zero_out_reach_a_block_device(IoEngineKind kind)
    {
        const int Block = 4096;
        using LoopDevice loop = RequireLoop(1 << 20, 512, fill: 0x77);
        using (DiskFile disk = DiskFile.Open(loop.Path, readOnly: false, direct: true))
        using (IIoEngine engine = kind switch
        {
            IoEngineKind.Inline => new InlineIoEngine(disk),
            IoEngineKind.Threads => new ThreadPoolIoEngine(disk, 2),
            _ => new IoUringIoEngine(disk, 8),
        })
        {
            var results = new Dictionary<ulong, int>();
            Run(engine, IoRequest.Range(IoOperation.ZeroOut, 2 * Block, 2 * Block, 1), results);
            Run(engine, IoRequest.Range(IoOperation.Discard, 8 * Block, 4 * Block, 2), results);
            Run(engine, IoRequest.Range(IoOperation.PunchHole, 16 * Block, Block, 3), results);
            Run(engine, IoRequest.Flush(4), results);
            Assert.That(results, Is.EquivalentTo(new Dictionary<ulong, int> { [1] = 0, [2] = 0, [3] = 0, [4] = 0 }),
                string.Join(", ", results.Select(r => $"{r.Key}: {IoResults.Describe(r.Value)}")));
        }

        byte[] content = File.ReadAllBytes(loop.BackingFile);
        Assert.Multiple(() =>
        {
            Assert.That(content.AsSpan(2 * Block, 2 * Block).ToArray(), Is.All.Zero, "BLKZEROOUT");
            Assert.That(content.AsSpan(8 * Block, 4 * Block).ToArray(), Is.All.Zero, "BLKDISCARD on a loop device punches the backing file");
            Assert.That(content.AsSpan(16 * Block, Block).ToArray(), Is.All.Zero, "PUNCH_HOLE on a block device zeroes");
            Assert.That(content.AsSpan(0, 2 * Block).ToArray(), Is.All.EqualTo(0x77));
            Assert.That(content.AsSpan(4 * Block, 4 * Block).ToArray(), Is.All.EqualTo(0x77));
        });
    }

    private static void Run(IIoEngine engine, in IoRequest request, Dictionary<ulong, int> results)
    {
        if (engine.Start(request, out int result))
        {
            results[request.Tag] = result;
            return;
        }

        engine.Submit();
        Span<IoCompletion> done = stackalloc IoCompletion[4];
        while (!results.ContainsKey(request.Tag))
        {
            engine.WaitForCompletion();
            int n = engine.Reap(done);
            for (int i = 0; i < n; i++)
            {
                results[done[i].Tag] = done[i].Result;
            }
        }
    }

    private static LoopDevice RequireLoop(long bytes, int sectorSize, byte fill = 0)
    {
        LoopDevice? loop = LoopDevice.TryCreate(bytes, sectorSize, out string reason, fill);
        if (loop is null)
        {
            Assert.Ignore(reason);
        }

        return loop!;
    }

    private static string TempFile(int bytes)
    {
        string path = Path.Combine(Path.GetTempPath(), $"vmm-disk-{Guid.NewGuid():N}.img");
        File.WriteAllBytes(path, new byte[bytes]);
        return path;
    }
}
