using System.Runtime.InteropServices;
using NUnit.Framework;
using Vmm.Core.Posix;
using Vmm.Core.Posix.IoUring;
using Vmm.Core.Posix.Storage;

namespace Vmm.Core.Tests.Posix.Storage;

/// <summary>
/// The three engines against a real file on the machine's disk (the temporary directory), buffered
/// and O_DIRECT: the same operations give the same results whichever engine carries them out, in
/// whatever order they complete.
/// </summary>
[TestFixture]
public sealed unsafe class IoEngineTests
{
    private const int Block = 4096;
    private const int Blocks = 64;

    /// <summary>The engines; "PlainRing" is io_uring without deferred task work (kernels before 6.1 get only that).</summary>
    public enum Variant
    {
        Inline,
        Threads,
        IoUring,
        PlainRing,
    }

    private static IEnumerable<TestCaseData> Engines()
    {
        foreach (Variant kind in Enum.GetValues<Variant>())
        {
            yield return new TestCaseData(kind, false).SetArgDisplayNames($"{kind}, buffered");
            yield return new TestCaseData(kind, true).SetArgDisplayNames($"{kind}, O_DIRECT");
        }
    }

    [TestCaseSource(nameof(Engines))]
    public void Writes_read_back_through_several_vectors_whatever_the_completion_order(Variant kind, bool direct)
    {
        using var file = new TempDisk(Blocks * Block);
        using DiskFile disk = DiskFile.Open(file.Path, readOnly: false, direct);
        using IIoEngine engine = Create(kind, disk);
        var ops = new Operations(engine);
        using var buffers = new AlignedBuffers(Blocks, Block);
        byte[] expected = new byte[Blocks * Block];
        new Random(7).NextBytes(expected);
        expected.CopyTo(buffers.All);

        // Every block written at once, each from two vectors (two halves), tagged by block number.
        IoVector* vectors = stackalloc IoVector[Blocks * 2];
        for (int b = 0; b < Blocks; b++)
        {
            vectors[2 * b] = new IoVector(buffers.At(b), Block / 2);
            vectors[(2 * b) + 1] = new IoVector(buffers.At(b) + (Block / 2), Block / 2);
            ops.Start(IoRequest.Write((long)b * Block, &vectors[2 * b], 2, dsync: false, (ulong)b));
        }

        Dictionary<ulong, int> writes = ops.Drain(Blocks);
        Assert.That(writes.Keys, Is.EquivalentTo(Enumerable.Range(0, Blocks).Select(b => (ulong)b)), "each write completes once");
        Assert.That(writes.Values, Is.All.EqualTo(Block));

        buffers.All.Clear();
        for (int b = 0; b < Blocks; b++)
        {
            ops.Start(IoRequest.Read((long)b * Block, &vectors[2 * b], 2, (ulong)(100 + b)));
        }

        Dictionary<ulong, int> reads = ops.Drain(Blocks);
        Assert.That(reads.Values, Is.All.EqualTo(Block));
        Assert.That(buffers.All.ToArray(), Is.EqualTo(expected));
        Assert.That(File.ReadAllBytes(file.Path), Is.EqualTo(expected), "the file holds what was written");
    }

    [TestCaseSource(nameof(Engines))]
    public void Flush_zero_range_and_punch_hole_work_on_a_file(Variant kind, bool direct)
    {
        using var file = new TempDisk(Blocks * Block, fill: 0x5A);
        using DiskFile disk = DiskFile.Open(file.Path, readOnly: false, direct);
        using IIoEngine engine = Create(kind, disk);
        var ops = new Operations(engine);

        ops.Start(IoRequest.Range(IoOperation.ZeroRange, 2 * Block, 3 * Block, 1));
        ops.Start(IoRequest.Range(IoOperation.PunchHole, 10 * Block, 2 * Block, 2));
        ops.Start(IoRequest.Flush(3));
        Dictionary<ulong, int> done = ops.Drain(3);

        Assert.That(done, Is.EquivalentTo(new Dictionary<ulong, int> { [1] = 0, [2] = 0, [3] = 0 }));
        byte[] content = File.ReadAllBytes(file.Path);
        Assert.Multiple(() =>
        {
            Assert.That(content.AsSpan(2 * Block, 3 * Block).ToArray(), Is.All.Zero);
            Assert.That(content.AsSpan(10 * Block, 2 * Block).ToArray(), Is.All.Zero);
            Assert.That(content.AsSpan(0, 2 * Block).ToArray(), Is.All.EqualTo(0x5A));
            Assert.That(content.AsSpan(5 * Block, 5 * Block).ToArray(), Is.All.EqualTo(0x5A));
            Assert.That(content.Length, Is.EqualTo(Blocks * Block), "KEEP_SIZE");
        });
    }

    [TestCaseSource(nameof(Engines))]
    public void Block_device_ioctls_on_a_regular_file_fail_with_ENOTTY_through_every_engine(Variant kind, bool direct)
    {
        // io_uring has no ioctl opcode: the engine runs these on its helper pool, whose eventfd
        // the ring polls; this checks that path end to end.
        using var file = new TempDisk(Blocks * Block);
        using DiskFile disk = DiskFile.Open(file.Path, readOnly: false, direct);
        using IIoEngine engine = Create(kind, disk);
        var ops = new Operations(engine);
        using var buffers = new AlignedBuffers(1, Block);
        var vector = new IoVector(buffers.At(0), Block);
        ops.Start(IoRequest.Range(IoOperation.Discard, 0, Block, 1));
        ops.Start(IoRequest.Read(0, &vector, 1, 2));
        ops.Start(IoRequest.Range(IoOperation.ZeroOut, 0, Block, 3));

        Dictionary<ulong, int> done = ops.Drain(3);

        Assert.That(IoResults.IsUnsupported(done[1]), Is.True, IoResults.Describe(done[1]));
        Assert.That(done[2], Is.EqualTo(Block));
        Assert.That(IoResults.IsUnsupported(done[3]), Is.True, IoResults.Describe(done[3]));
        Assert.That(engine.InFlight, Is.Zero);
    }

    [TestCaseSource(nameof(Engines))]
    public void A_read_past_the_end_is_short_and_an_error_is_a_negative_errno(Variant kind, bool direct)
    {
        using var file = new TempDisk(4 * Block);
        using DiskFile disk = DiskFile.Open(file.Path, readOnly: true, direct);
        using IIoEngine engine = Create(kind, disk);
        var ops = new Operations(engine);
        using var buffers = new AlignedBuffers(2, Block);
        var vector = new IoVector(buffers.At(0), 2 * Block);
        ops.Start(IoRequest.Read(3 * Block, &vector, 1, 1));
        ops.Start(IoRequest.Write(0, &vector, 1, dsync: false, 2));

        Dictionary<ulong, int> done = ops.Drain(2);

        Assert.That(done[1], Is.EqualTo(Block), "one block before the end");
        Assert.That(done[2], Is.EqualTo(-9), "EBADF: the disk is open read-only");
    }

    [Test]
    public void The_thread_engine_runs_requests_in_parallel_threads_up_to_its_limit()
    {
        using var file = new TempDisk(Blocks * Block);
        using DiskFile disk = DiskFile.Open(file.Path, readOnly: false, direct: false);
        using var engine = new ThreadPoolIoEngine(disk, maxThreads: 4);
        var ops = new Operations(engine);
        using var buffers = new AlignedBuffers(Blocks, Block);
        IoVector* vectors = stackalloc IoVector[Blocks];
        for (int b = 0; b < Blocks; b++)
        {
            vectors[b] = new IoVector(buffers.At(b), Block);
            ops.Start(IoRequest.Read((long)b * Block, &vectors[b], 1, (ulong)b));
        }

        Dictionary<ulong, int> done = ops.Drain(Blocks);
        Assert.That(done, Has.Count.EqualTo(Blocks));
        Assert.That(engine.ThreadCount, Is.InRange(1, 4));
    }

    [Test]
    public void Selection_falls_back_to_threads_when_io_uring_is_unavailable_and_says_why()
    {
        using var file = new TempDisk(Block);
        using DiskFile direct = DiskFile.Open(file.Path, readOnly: false, direct: true);
        using DiskFile buffered = DiskFile.Open(file.Path, readOnly: false, direct: false);
        var forbidden = new IoUringAvailability(false, "io_uring_setup failed: Operation not permitted (errno 1)");

        IoEngineChoice auto = IoEngineChoice.Select(AioMode.Auto, direct, forbidden);
        Assert.That(auto.Kind, Is.EqualTo(IoEngineKind.Threads));
        Assert.That(auto.Description, Does.StartWith("threads (io_uring unavailable: ").And.Contain("Operation not permitted"));
        Assert.That(() => IoEngineChoice.Select(AioMode.IoUring, direct, forbidden), Throws.InstanceOf<IOException>().With.Message.Contains("not available"));
        Assert.That(IoEngineChoice.Select(AioMode.Auto, direct, IoUringAvailability.Yes).Kind, Is.EqualTo(IoEngineKind.IoUring), "O_DIRECT: io_uring");
        Assert.That(IoEngineChoice.Select(AioMode.Auto, buffered, IoUringAvailability.Yes).Kind, Is.EqualTo(IoEngineKind.Threads), "through the page cache: threads");
        Assert.That(IoEngineChoice.Select(AioMode.IoUring, buffered, IoUringAvailability.Yes).Kind, Is.EqualTo(IoEngineKind.IoUring), "asked for explicitly");
        Assert.That(IoEngineChoice.Select(AioMode.Inline, direct, forbidden).Kind, Is.EqualTo(IoEngineKind.Inline));
        Assert.That(IoEngineChoice.Select(AioMode.Threads, direct, IoUringAvailability.Yes).Kind, Is.EqualTo(IoEngineKind.Threads));
    }

    [Test]
    public void Auto_runs_an_image_in_RAM_inline()
    {
        Assume.That(Directory.Exists("/dev/shm"), "no /dev/shm");
        using var file = new TempDisk(Block, directory: "/dev/shm");
        using DiskFile disk = DiskFile.Open(file.Path, readOnly: false, direct: false);
        Assert.That(disk.IsRamBacked, Is.True);
        Assert.That(IoEngineChoice.Select(AioMode.Auto, disk, IoUringAvailability.Yes).Kind, Is.EqualTo(IoEngineKind.Inline));
    }

    [Test]
    public void On_this_kernel_io_uring_defers_completion_work_to_its_owner()
    {
        using var file = new TempDisk(Block);
        using DiskFile disk = DiskFile.Open(file.Path, readOnly: false, direct: false);
        using var engine = new IoUringIoEngine(disk, 8);
        TestContext.Out.WriteLine($"{Environment.OSVersion}: deferred task work {engine.DeferredTaskRun}, registered file {engine.RegisteredFile}");
        Assert.That(engine.RegisteredFile, Is.True);
        Assert.That(engine.CompletionHandle is null, Is.EqualTo(engine.DeferredTaskRun), "a deferred ring is waited on through WaitForEvents only");
    }

    private static IIoEngine Create(Variant kind, DiskFile disk) => kind switch
    {
        Variant.Inline => new InlineIoEngine(disk),
        Variant.Threads => new ThreadPoolIoEngine(disk, 8),
        Variant.IoUring => new IoUringIoEngine(disk, 64),
        _ => new IoUringIoEngine(disk, 64, deferTaskRun: false),
    };

    /// <summary>Starts operations on an engine and collects every result, whether it came from Start or Reap.</summary>
    private sealed class Operations(IIoEngine engine)
    {
        private readonly Dictionary<ulong, int> _results = [];

        public void Start(in IoRequest request)
        {
            if (engine.Start(request, out int result))
            {
                Assert.That(_results.TryAdd(request.Tag, result), Is.True);
            }
        }

        /// <summary>Submits and reaps until <paramref name="count"/> results are in; each tag must come once.</summary>
        public Dictionary<ulong, int> Drain(int count)
        {
            engine.Submit();
            Span<IoCompletion> batch = stackalloc IoCompletion[16];
            DateTime deadline = DateTime.UtcNow.AddMinutes(2);
            while (_results.Count < count)
            {
                Assert.That(DateTime.UtcNow, Is.LessThan(deadline), $"{_results.Count} of {count} operations finished");
                engine.WaitForCompletion();
                int n = engine.Reap(batch);
                for (int i = 0; i < n; i++)
                {
                    Assert.That(_results.TryAdd(batch[i].Tag, batch[i].Result), Is.True, $"tag {batch[i].Tag} completed twice");
                }
            }

            Assert.That(engine.InFlight, Is.Zero);
            var done = new Dictionary<ulong, int>(_results);
            _results.Clear();
            return done;
        }
    }

    /// <summary>A file of a given size in the temporary directory (the machine's disk), deleted on dispose.</summary>
    private sealed class TempDisk : IDisposable
    {
        public TempDisk(int bytes, byte fill = 0, string? directory = null)
        {
            Path = System.IO.Path.Combine(directory ?? System.IO.Path.GetTempPath(), $"vmm-engine-{Guid.NewGuid():N}.img");
            byte[] content = new byte[bytes];
            Array.Fill(content, fill);
            File.WriteAllBytes(Path, content);
        }

        public string Path { get; }

        public void Dispose() => File.Delete(Path);
    }

    /// <summary>Page-aligned native buffers, as O_DIRECT wants.</summary>
    private sealed class AlignedBuffers : IDisposable
    {
        private readonly int _size;

        public AlignedBuffers(int count, int size)
        {
            _size = count * size;
            Base = (byte*)NativeMemory.AlignedAlloc((nuint)_size, 4096);
            BlockSize = size;
            All.Clear();
        }

        public byte* Base { get; private set; }

        public int BlockSize { get; }

        public Span<byte> All => new(Base, _size);

        public byte* At(int index) => Base + ((long)index * BlockSize);

        public void Dispose()
        {
            NativeMemory.AlignedFree(Base);
            Base = null;
        }
    }
}
