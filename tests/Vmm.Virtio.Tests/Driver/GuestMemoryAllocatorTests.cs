using NUnit.Framework;
using Vmm.Virtio.Driver;

namespace Vmm.Virtio.Tests.Driver;

[TestFixture]
public sealed class GuestMemoryAllocatorTests
{
    [Test]
    public void Allocations_are_aligned_disjoint_and_inside_the_window()
    {
        var a = new GuestMemoryAllocator(0x1003, 0x10000);
        var ranges = new List<(ulong Start, ulong End)>();
        foreach (ulong align in new ulong[] { 1, 2, 4, 16, 4096, 16 })
        {
            ulong at = a.Allocate(100, align);
            Assert.That(at % align, Is.Zero);
            Assert.That(at, Is.GreaterThanOrEqualTo(0x1003UL));
            Assert.That(at + 100, Is.LessThanOrEqualTo(0x11003UL));
            Assert.That(ranges.Any(r => at < r.End && r.Start < at + 100), Is.False);
            ranges.Add((at, at + 100));
        }
    }

    [Test]
    public void Freed_ranges_coalesce_and_can_be_reused_whole()
    {
        var a = new GuestMemoryAllocator(0, 0x3000);
        ulong x = a.Allocate(0x1000, 1);
        ulong y = a.Allocate(0x1000, 1);
        ulong z = a.Allocate(0x1000, 1);
        Assert.That(a.TryAllocate(1, 1, out _), Is.False);
        a.Free(y);
        a.Free(x);
        a.Free(z);
        Assert.That(a.FreeBytes, Is.EqualTo(0x3000));
        Assert.That(a.Allocate(0x3000, 1), Is.Zero);
    }

    [Test]
    public void Exhaustion_and_bad_frees_are_reported()
    {
        var a = new GuestMemoryAllocator(0, 0x100);
        Assert.Throws<InsufficientMemoryException>(() => a.Allocate(0x101));
        Assert.Throws<ArgumentException>(() => a.Free(0x10));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.Allocate(8, 3));
    }

    [Test]
    public void Concurrent_allocations_never_overlap()
    {
        var a = new GuestMemoryAllocator(0, 1 << 20);
        var all = new System.Collections.Concurrent.ConcurrentBag<ulong>();
        Parallel.For(0, 4, _ =>
        {
            for (int i = 0; i < 300; i++)
            {
                ulong at = a.Allocate(64, 64);
                if (i % 3 == 0)
                {
                    a.Free(at);
                }
                else
                {
                    all.Add(at);
                }
            }
        });
        Assert.That(all.Distinct().Count(), Is.EqualTo(all.Count));
        Assert.That(a.FreeBytes, Is.EqualTo((1UL << 20) - ((ulong)all.Count * 64)));
        foreach (ulong at in all)
        {
            a.Free(at);
        }

        Assert.That(a.FreeBytes, Is.EqualTo(1UL << 20));
        Assert.That(a.Allocate(1 << 20, 1), Is.Zero);
    }
}
