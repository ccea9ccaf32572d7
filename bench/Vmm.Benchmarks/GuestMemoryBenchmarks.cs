using BenchmarkDotNet.Attributes;
using Vmm.Core.Memory;

namespace Vmm.Benchmarks;

/// <summary>Bounds-checked guest memory access: the ring-field accessors and a 4 KiB block copy.</summary>
[MemoryDiagnoser]
public class GuestMemoryBenchmarks
{
    private GuestMemory _memory = null!;
    private readonly byte[] _block = new byte[4096];

    [GlobalSetup]
    public void Setup() => _memory = GuestMemory.Create(16 << 20);

    [GlobalCleanup]
    public void Cleanup() => _memory.Dispose();

    [Benchmark]
    public ushort RingIndexReadAcquire() => _memory.ReadUInt16Acquire(0x2002);

    [Benchmark]
    public void RingIndexWriteRelease() => _memory.WriteUInt16Release(0x2002, 7);

    [Benchmark]
    public void Write4KiB() => _memory.Write(0x10_0000, _block);

    [Benchmark]
    public void Read4KiB() => _memory.Read(0x10_0000, _block);
}
