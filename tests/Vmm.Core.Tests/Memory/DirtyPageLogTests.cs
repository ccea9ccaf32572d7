using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Core.Tests.Support;

namespace Vmm.Core.Tests.Memory;

[TestFixture]
public sealed unsafe class DirtyPageLogTests
{
    private const ulong Page = DirtyPageLog.PageSize;

    [Test]
    public void SizeFor_rounds_up_to_whole_words()
    {
        Assert.That(DirtyPageLog.SizeFor(0), Is.EqualTo(0UL));
        Assert.That(DirtyPageLog.SizeFor(1), Is.EqualTo(8UL));
        Assert.That(DirtyPageLog.SizeFor(64 * Page), Is.EqualTo(8UL));
        Assert.That(DirtyPageLog.SizeFor((64 * Page) + 1), Is.EqualTo(16UL));
        Assert.That(DirtyPageLog.SizeFor(256UL << 20), Is.EqualTo(8192UL));
        Assert.That(DirtyPageLog.BytesToCover(9 * Page), Is.EqualTo(2UL));
        Assert.That(DirtyPageLog.BytesToCover((8 * Page) + 1), Is.EqualTo(2UL));
        Assert.That(DirtyPageLog.BytesToCover(8 * Page), Is.EqualTo(1UL));
    }

    [Test]
    public void MarkDirty_sets_bit_page_mod_8_of_byte_page_div_8_as_the_peer_sees_it()
    {
        using DirtyPageLog log = DirtyPageLog.Create(1024 * Page);
        using SharedMapping peer = SharedMapping.Map(log.Fd!, 0, log.Size);

        Assert.That(log.MarkDirty(11 * Page, 1), Is.True);

        // vhost-user.rst, "Migration": log[page / 8] |= 1 << page % 8.
        Assert.That(peer.Address[1], Is.EqualTo((byte)(1 << 3)));
        Assert.That(CountBits(peer), Is.EqualTo(1));
    }

    [Test]
    public void MarkDirty_marks_every_page_a_range_touches_across_words()
    {
        using DirtyPageLog log = DirtyPageLog.Create(1024 * Page);

        // From the last byte of page 60 to the first byte of page 130: pages 60..130.
        log.MarkDirty((61 * Page) - 1, (70 * Page) + 1);

        Assert.That(log.IsDirty(59), Is.False);
        for (ulong p = 60; p <= 130; p++)
        {
            Assert.That(log.IsDirty(p), Is.True, $"page {p}");
        }

        Assert.That(log.IsDirty(131), Is.False);
    }

    [Test]
    public void MarkDirty_of_zero_bytes_marks_nothing_and_pages_beyond_the_log_are_skipped()
    {
        using DirtyPageLog log = DirtyPageLog.Create(64 * Page);
        using SharedMapping peer = SharedMapping.Map(log.Fd!, 0, log.Size);

        log.MarkDirty(5 * Page, 0);
        Assert.That(CountBits(peer), Is.Zero);

        log.MarkDirty(63 * Page, 10 * Page);
        log.MarkDirty(ulong.MaxValue - 10, 100);
        Assert.That(CountBits(peer), Is.EqualTo(1));
        Assert.That(log.IsDirty(63), Is.True);
    }

    [Test]
    public void HarvestAndClear_moves_the_bits_into_the_bitmap_and_clears_them()
    {
        using DirtyPageLog log = DirtyPageLog.Create(256 * Page);
        log.MarkDirty(0, 1);
        log.MarkDirty(65 * Page, 2 * Page);
        var bitmap = new ulong[4];
        bitmap[3] = 1UL << 5;

        ulong harvested = log.HarvestAndClear(bitmap);

        Assert.That(harvested, Is.EqualTo(3UL));
        Assert.That(bitmap, Is.EqualTo(new ulong[] { 1, 0b110, 0, 1UL << 5 }));
        Assert.That(log.HarvestAndClear(new ulong[4]), Is.Zero);
    }

    [Test]
    public void A_peers_log_at_an_offset_with_a_size_not_a_multiple_of_8_is_marked_and_harvested()
    {
        using DirtyPageLog created = DirtyPageLog.Create(4096 * Page);
        ulong offset = 100;
        using DirtyPageLog log = DirtyPageLog.Map(created.Fd!, 13, offset);

        Assert.That(log.CoveredBytes, Is.EqualTo(13 * 8 * Page));
        log.MarkDirty(0, 1);
        log.MarkDirty(101 * Page, 1);
        log.MarkDirty(200 * Page, 1);

        using SharedMapping raw = SharedMapping.Map(created.Fd!, 0, created.Size);
        Assert.That(raw.Address[offset], Is.EqualTo((byte)1));
        Assert.That(raw.Address[offset + 12], Is.EqualTo((byte)(1 << 5)));
        var bitmap = new ulong[2];
        Assert.That(log.HarvestAndClear(bitmap), Is.EqualTo(2UL));
        Assert.That(bitmap[1], Is.EqualTo(1UL << (101 - 64)));
    }

    [Test]
    public void Map_refuses_a_range_beyond_its_file()
    {
        using SafeFileDescriptor fd = MemFd.Create("log", 4096);

        Assert.That(() => DirtyPageLog.Map(fd, 4096, 1), Throws.ArgumentException.With.Message.Contains("beyond its file"));
        Assert.That(() => DirtyPageLog.Map(fd, 8, 8192), Throws.ArgumentException.With.Message.Contains("beyond its file"));
    }

    [Test]
    public void Map_refuses_a_size_that_overflows_and_a_zero_size()
    {
        using SafeFileDescriptor fd = MemFd.Create("log", 4096);

        Assert.That(() => DirtyPageLog.Map(fd, ulong.MaxValue, 4096), Throws.ArgumentException.With.Message.Contains("overflows"));
        Assert.That(() => DirtyPageLog.Map(fd, 0, 0), Throws.ArgumentException.With.Message.Contains("zero"));
    }

    [Test]
    public void Map_refuses_an_eventfd_and_a_pipe()
    {
        using var eventFd = new EventFd();
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        using (write)
        {
            Assert.That(() => DirtyPageLog.Map(eventFd.Handle, 8, 0), Throws.ArgumentException.With.Message.Contains("an eventfd"));
            Assert.That(() => DirtyPageLog.Map(read, 8, 0), Throws.ArgumentException.With.Message.Contains("a pipe"));
        }
    }

    [Test]
    public void Map_refuses_a_file_that_can_shrink_when_no_guard_is_asked_for()
    {
        using SafeFileDescriptor fd = TestFiles.UnsealableMemfd(4096);

        Assert.That(() => DirtyPageLog.Map(fd, 8, 0), Throws.ArgumentException.With.Message.Contains("can still shrink"));
    }

    [Test]
    public void A_retired_log_refuses_new_marks_while_marks_racing_with_retirement_finish_first()
    {
        DirtyPageLog log = DirtyPageLog.Create(1024 * Page);
        using var go = new ManualResetEventSlim();
        int refused = 0;
        var markers = new Thread[2];
        for (int t = 0; t < markers.Length; t++)
        {
            markers[t] = new Thread(() =>
            {
                go.Set();
                while (log.MarkDirty(7 * Page, 100 * Page))
                {
                }

                Interlocked.Increment(ref refused);
            });
            markers[t].Start();
        }

        go.Wait();
        log.Dispose();
        foreach (Thread t in markers)
        {
            t.Join();
        }

        Assert.That(refused, Is.EqualTo(markers.Length));
        Assert.That(log.MarkDirty(0, 1), Is.False);
    }

    private static int CountBits(SharedMapping mapping)
    {
        int n = 0;
        for (ulong i = 0; i < mapping.Length; i++)
        {
            n += System.Numerics.BitOperations.PopCount(mapping.Address[i]);
        }

        return n;
    }
}
