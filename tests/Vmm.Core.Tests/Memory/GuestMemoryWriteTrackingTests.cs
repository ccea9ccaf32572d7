using Vmm.Core.Memory;

namespace Vmm.Core.Tests.Memory;

[TestFixture]
public sealed class GuestMemoryWriteTrackingTests
{
    private const ulong Page = 4096;

    private static ulong[] Harvest(GuestMemory memory, out long moved)
    {
        var bitmap = new ulong[DirtyPageBitmap.WordsFor(memory)];
        moved = memory.HarvestDirtyPages(bitmap);
        return bitmap;
    }

    private static ulong[] Pages(GuestMemory memory) => [.. DirtyPageBitmap.Pages(Harvest(memory, out _))];

    [Test]
    public void Writes_before_logging_starts_are_not_reported()
    {
        using var memory = GuestMemory.Create(64 * Page);
        memory.WriteUInt32(3 * Page, 1);
        memory.Write(5 * Page, new byte[10]);

        Assert.That(memory.HarvestDirtyPages(new ulong[1]), Is.Zero);
        memory.StartLogging();
        Assert.That(Pages(memory), Is.Empty);
    }

    [Test]
    public void Every_write_accessor_marks_its_pages()
    {
        using var memory = GuestMemory.Create(256 * Page);
        memory.StartLogging();

        memory.WriteByte(1 * Page, 1);
        memory.WriteUInt16(2 * Page, 1);
        memory.WriteUInt32(3 * Page, 1);
        memory.WriteUInt64(4 * Page, 1);
        memory.WriteUInt16Release(5 * Page, 1);
        memory.Write((7 * Page) - 1, new byte[2]);
        memory.Clear(10 * Page, 3 * Page);
        memory.GetSpan(100 * Page, 8)[0] = 1;

        ulong[] expected = [.. new ulong[] { 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 100 }.Select(p => p * Page)];
        Assert.That(Pages(memory), Is.EqualTo(expected));
    }

    [Test]
    public void Reads_and_read_only_spans_do_not_mark()
    {
        using var memory = GuestMemory.Create(16 * Page);
        memory.StartLogging();

        _ = memory.ReadUInt64(Page);
        _ = memory.ReadUInt16Acquire(2 * Page);
        memory.Read(3 * Page, new byte[100]);
        _ = memory.GetReadOnlySpan(4 * Page, 100).ToArray();

        Assert.That(Pages(memory), Is.Empty);
    }

    [Test]
    public void A_harvest_clears_what_it_moved_and_the_next_one_sees_only_new_writes()
    {
        using var memory = GuestMemory.Create(200 * Page);
        memory.StartLogging();
        memory.WriteUInt32(65 * Page, 1);
        memory.WriteUInt32(130 * Page, 1);

        ulong[] first = Harvest(memory, out long moved);
        Assert.That(moved, Is.EqualTo(2));
        Assert.That(DirtyPageBitmap.Pages(first), Is.EqualTo(new[] { 65 * Page, 130 * Page }));

        memory.WriteUInt32(130 * Page, 2);
        Assert.That(Pages(memory), Is.EqualTo(new[] { 130 * Page }));
        Assert.That(Pages(memory), Is.Empty);
    }

    [Test]
    public void Harvest_ors_into_the_callers_bitmap()
    {
        using var memory = GuestMemory.Create(64 * Page);
        memory.StartLogging();
        memory.WriteByte(2 * Page, 1);
        var bitmap = new ulong[] { 1UL << 9 };

        Assert.That(memory.HarvestDirtyPages(bitmap), Is.EqualTo(1));
        Assert.That(bitmap[0], Is.EqualTo((1UL << 9) | (1UL << 2)));
    }

    [Test]
    public void Stopping_drops_the_log_and_later_writes_are_not_reported()
    {
        using var memory = GuestMemory.Create(16 * Page);
        memory.StartLogging();
        memory.WriteByte(Page, 1);
        memory.StopLogging();
        memory.WriteByte(2 * Page, 1);

        Assert.That(memory.IsTrackingWrites, Is.False);
        Assert.That(memory.HarvestDirtyPages(new ulong[1]), Is.Zero);
        memory.StartLogging();
        Assert.That(Pages(memory), Is.Empty);
    }

    [Test]
    public void A_region_added_while_logging_is_reported_whole_once_written()
    {
        using var memory = GuestMemory.Create(64 * Page);
        memory.StartLogging();
        memory.AddRegion(new GuestMemoryRange(1024 * Page, 4 * Page));
        memory.WriteByte(1025 * Page, 1);

        Assert.That(Pages(memory), Is.EqualTo(new[] { 1024 * Page, 1025 * Page, 1026 * Page, 1027 * Page }));
        Assert.That(Pages(memory), Is.Empty);
    }

    [Test]
    public void A_bitmap_smaller_than_the_log_is_refused()
    {
        using var memory = GuestMemory.Create(256 * Page);
        memory.StartLogging();
        memory.WriteByte(0, 1);

        Assert.Throws<ArgumentException>(() => memory.HarvestDirtyPages(new ulong[1]));
    }

    [Test]
    public void Concurrent_writes_during_harvests_are_each_reported_at_least_once()
    {
        using var memory = GuestMemory.Create(4096 * Page);
        memory.StartLogging();
        var seen = new ulong[DirtyPageBitmap.WordsFor(memory)];
        var writer = Task.Run(() =>
        {
            for (ulong p = 0; p < 4096; p++)
            {
                memory.WriteByte(p * Page, 1);
            }
        });
        while (!writer.IsCompleted)
        {
            memory.HarvestDirtyPages(seen);
        }

        writer.GetAwaiter().GetResult();
        memory.HarvestDirtyPages(seen);
        Assert.That(DirtyPageBitmap.Count(seen), Is.EqualTo(4096));
    }
}
