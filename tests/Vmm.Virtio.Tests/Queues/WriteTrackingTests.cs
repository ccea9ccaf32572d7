using NUnit.Framework;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Queues;

namespace Vmm.Virtio.Tests.Queues;

/// <summary>
/// The VMM's own writes while guest memory tracks them (docs/migration.md): an in-process device
/// publishing a chain marks its device-writable buffers, and only those, also when the data was
/// written through a span taken before the harvest.
/// </summary>
[TestFixture]
public sealed class WriteTrackingTests
{
    [TestCaseSource(typeof(QueueHarness), nameof(QueueHarness.RingKinds))]
    public void Completing_a_chain_marks_its_writable_buffers_after_a_harvest_took_the_earlier_marks(bool packed, ulong features)
    {
        using QueueHarness h = QueueHarness.Create(packed, 16, features);

        // Far apart, so each buffer has pages of its own.
        ulong readable = h.Allocator.Allocate(16, 4096);
        ulong writable = h.Allocator.Allocate(3 * 4096, 4096);
        h.Memory.StartLogging();
        Assert.That(h.Driver.TrySubmit([new DriverBuffer(readable, 16, false), new DriverBuffer(writable, 3 * 4096, true)], 1u), Is.True);
        Assert.That(h.Device.TryPop(out DescriptorChain chain), Is.True);

        // The device takes a span of the buffer, a harvest runs, then the data lands.
        Span<byte> data = h.Memory.GetSpan(writable, 3 * 4096);
        h.Memory.HarvestDirtyPages(new ulong[DirtyPageBitmap.WordsFor(h.Memory)]);
        data.Fill(0x5A);
        h.Device.Complete(chain, 3 * 4096);

        var dirty = new ulong[DirtyPageBitmap.WordsFor(h.Memory)];
        h.Memory.HarvestDirtyPages(dirty);
        ulong[] pages = [.. DirtyPageBitmap.Pages(dirty)];
        Assert.That(pages, Is.SupersetOf(new[] { writable, writable + 4096, writable + 8192 }), "every page of the writable buffer");
        Assert.That(pages, Does.Not.Contain(readable), "the device only read that one");
    }
}
