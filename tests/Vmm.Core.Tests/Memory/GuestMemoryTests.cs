using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Core.Tests.Support;

namespace Vmm.Core.Tests.Memory;

[TestFixture]
public sealed class GuestMemoryTests
{
    private const ulong Page = 4096;

    [Test]
    public void Create_makes_one_zeroed_region_at_gpa_zero()
    {
        using var memory = GuestMemory.Create(16 * Page);

        Assert.That(memory.Regions, Has.Count.EqualTo(1));
        Assert.That(memory.Regions[0].GuestPhysicalAddress, Is.EqualTo(0UL));
        Assert.That(memory.Regions[0].Size, Is.EqualTo(16 * Page));
        Assert.That(memory.ReadUInt64(8 * Page), Is.EqualTo(0UL));
        Assert.That(memory.TotalSize, Is.EqualTo(16 * Page));
    }

    [Test]
    public void Scalars_are_little_endian_and_round_trip()
    {
        using var memory = GuestMemory.Create(Page);

        memory.WriteUInt32(0x10, 0x11223344);
        memory.WriteUInt64(0x20, 0x0102030405060708);
        memory.WriteUInt16(0x30, 0xbeef);
        memory.WriteByte(0x40, 0x7f);

        Span<byte> raw = stackalloc byte[4];
        memory.Read(0x10, raw);
        Assert.That(raw.ToArray(), Is.EqualTo(new byte[] { 0x44, 0x33, 0x22, 0x11 }));
        Assert.That(memory.ReadUInt32(0x10), Is.EqualTo(0x11223344u));
        Assert.That(memory.ReadUInt64(0x20), Is.EqualTo(0x0102030405060708UL));
        Assert.That(memory.ReadUInt16(0x30), Is.EqualTo((ushort)0xbeef));
        Assert.That(memory.ReadByte(0x40), Is.EqualTo((byte)0x7f));
        memory.WriteUInt16Release(0x50, 0x1234);
        Assert.That(memory.ReadUInt16Acquire(0x50), Is.EqualTo((ushort)0x1234));
    }

    [Test]
    public void Zero_length_access_at_the_end_is_allowed_and_one_past_is_not()
    {
        using var memory = GuestMemory.Create(Page);

        Assert.That(() => memory.Read(Page - 1, Span<byte>.Empty), Throws.Nothing);
        Assert.That(memory.IsValidRange(Page - 1, 0), Is.True);
        Assert.That(memory.IsValidRange(Page, 0), Is.False);
    }

    [Test]
    public void Last_byte_is_accessible_and_one_past_is_rejected()
    {
        using var memory = GuestMemory.Create(Page);

        memory.WriteByte(Page - 1, 0xaa);
        Assert.That(memory.ReadByte(Page - 1), Is.EqualTo((byte)0xaa));
        Assert.That(() => memory.ReadByte(Page), Throws.TypeOf<GuestMemoryException>());
        Assert.That(() => memory.ReadUInt16(Page - 1), Throws.TypeOf<GuestMemoryException>());
        Assert.That(() => memory.WriteUInt64(Page - 4, 1), Throws.TypeOf<GuestMemoryException>());
        Assert.That(memory.IsValidRange(Page - 8, 8), Is.True);
        Assert.That(memory.IsValidRange(Page - 8, 9), Is.False);
    }

    [Test]
    public void Overflowing_address_plus_length_is_rejected()
    {
        using var memory = GuestMemory.Create(Page);

        Assert.That(memory.IsValidRange(ulong.MaxValue, 2), Is.False);
        Assert.That(memory.IsValidRange(1, ulong.MaxValue), Is.False);
        Assert.That(() => memory.GetSpan(ulong.MaxValue - 1, 4), Throws.TypeOf<GuestMemoryException>());
    }

    [Test]
    public void Gaps_between_regions_are_rejected_and_adjacent_regions_read_across()
    {
        using var memory = GuestMemory.Create([
            new GuestMemoryRange(0, Page),
            new GuestMemoryRange(Page, Page),
            new GuestMemoryRange(4 * Page, Page),
        ]);

        Assert.That(memory.IsValidRange(2 * Page, 1), Is.False, "gap");
        Assert.That(() => memory.ReadByte(3 * Page + 5), Throws.TypeOf<GuestMemoryException>());
        Assert.That(memory.ReadByte(4 * Page), Is.EqualTo((byte)0));

        // A copy may cross adjacent regions; a span (one host mapping) may not.
        byte[] pattern = Enumerable.Range(0, 64).Select(i => (byte)i).ToArray();
        memory.Write(Page - 32, pattern);
        byte[] back = new byte[64];
        memory.Read(Page - 32, back);
        Assert.That(back, Is.EqualTo(pattern));
        Assert.That(() => memory.GetSpan(Page - 32, 64), Throws.TypeOf<GuestMemoryException>());

        // A copy that runs into a gap fails.
        Assert.That(() => memory.Write(2 * Page - 8, new byte[16]), Throws.TypeOf<GuestMemoryException>());
    }

    [Test]
    public void Overlapping_regions_are_refused()
    {
        using var memory = GuestMemory.Create(4 * Page);

        Assert.That(() => memory.AddRegion(new GuestMemoryRange(3 * Page, 2 * Page)), Throws.TypeOf<GuestMemoryException>());
        Assert.That(() => memory.AddRegion(new GuestMemoryRange(0, Page)), Throws.TypeOf<GuestMemoryException>());
        Assert.That(memory.Regions, Has.Count.EqualTo(1));
    }

    [Test]
    public void Zero_sized_and_wrapping_regions_are_refused()
    {
        using var memory = new GuestMemory();

        Assert.That(() => memory.AddRegion(new GuestMemoryRange(0, 0)), Throws.TypeOf<GuestMemoryException>());
        Assert.That(() => memory.AddRegion(new GuestMemoryRange(ulong.MaxValue - Page + 2, Page)), Throws.TypeOf<GuestMemoryException>());
    }

    [Test]
    public void Received_regions_translate_by_gpa_and_by_user_address()
    {
        using var vmm = GuestMemory.Create([new GuestMemoryRange(0, 4 * Page), new GuestMemoryRange(0x100000, 2 * Page)]);
        using var backend = new GuestMemory();
        foreach (GuestMemoryRegion r in vmm.Regions)
        {
            backend.AddRegion(r.GuestPhysicalAddress, r.Size, r.UserAddress, Duplicate(r.Fd), r.FileOffset);
        }

        vmm.WriteUInt64(0x100008, 0xfeedface);
        Assert.That(backend.ReadUInt64(0x100008), Is.EqualTo(0xfeedfaceUL), "shared mapping");
        backend.WriteUInt32(0x10, 77);
        Assert.That(vmm.ReadUInt32(0x10), Is.EqualTo(77u));

        GuestMemoryRegion high = vmm.Regions[1];
        Assert.That(backend.TryTranslateUserAddress(high.UserAddress + 8, 8, out ulong gpa), Is.True);
        Assert.That(gpa, Is.EqualTo(0x100008UL));

        // Past the end of every region: high.UserAddress + its size may be where the kernel put
        // the other region's mapping (mmap places them side by side), so that is no test.
        ulong beyondAll = vmm.Regions.Max(r => r.UserAddress + r.Size);
        ulong belowAll = vmm.Regions.Min(r => r.UserAddress) - 1;
        Assert.That(backend.TryTranslateUserAddress(beyondAll, 1, out _), Is.False);
        Assert.That(backend.TryTranslateUserAddress(belowAll, 1, out _), Is.False);
    }

    [Test]
    public void A_region_at_a_file_offset_maps_from_that_offset()
    {
        using SafeFileDescriptor fd = MemFd.Create("offset-test", 8 * Page);
        using (var writer = new GuestMemory())
        {
            writer.AddRegion(0, 8 * Page, 0x7000_0000, Duplicate(fd), 0);
            writer.WriteUInt32(3 * Page + 12, 0xabcdef);
        }

        using var memory = new GuestMemory();
        memory.AddRegion(0x1000_0000, 2 * Page, 0x5000_0000, Duplicate(fd), 3 * Page);
        Assert.That(memory.ReadUInt32(0x1000_0000 + 12), Is.EqualTo(0xabcdefu));
    }

    [Test]
    public void A_region_beyond_the_end_of_its_file_is_refused_and_its_fd_closed()
    {
        using SafeFileDescriptor fd = MemFd.Create("short-file", 2 * Page);
        using var memory = new GuestMemory();
        SafeFileDescriptor dup = Duplicate(fd);

        Assert.That(() => memory.AddRegion(0, 2 * Page, 0, dup, Page), Throws.TypeOf<GuestMemoryException>());
        Assert.That(dup.IsClosed, Is.True);
        Assert.That(() => memory.AddRegion(0, 4 * Page, 0, Duplicate(fd), 0), Throws.TypeOf<GuestMemoryException>());
        Assert.That(() => memory.AddRegion(0, Page, 0, Duplicate(fd), ulong.MaxValue - 10), Throws.TypeOf<GuestMemoryException>());
        Assert.That(memory.Regions, Is.Empty);
    }

    [Test]
    public void Regions_are_added_and_removed_at_run_time_with_change_events()
    {
        using var memory = GuestMemory.Create(Page);
        var changes = new List<GuestMemoryChange>();
        memory.Changed += changes.Add;

        GuestMemoryRegion added = memory.AddRegion(new GuestMemoryRange(0x10_0000, Page));
        memory.WriteByte(0x10_0000, 1);
        GuestMemoryRegion? removed = memory.RemoveRegion(0x10_0000, Page);

        Assert.That(removed, Is.SameAs(added));
        Assert.That(changes.Select(c => c.Kind), Is.EqualTo(new[] { GuestMemoryChangeKind.Added, GuestMemoryChangeKind.Removed }));
        Assert.That(() => memory.ReadByte(0x10_0000), Throws.TypeOf<GuestMemoryException>());
        Assert.That(memory.RemoveRegion(0x10_0000, Page), Is.Null);
        removed!.Dispose();
    }

    [Test]
    public void Lookup_finds_every_region_of_a_large_table()
    {
        using var memory = new GuestMemory();
        using SafeFileDescriptor fd = MemFd.Create("many", 64 * Page);
        for (ulong i = 0; i < 64; i++)
        {
            memory.AddRegion(i * 2 * Page, Page, 0x4000_0000 + i * Page, Duplicate(fd), i * Page);
        }

        for (ulong i = 0; i < 64; i++)
        {
            Assert.That(memory.IsValidRange(i * 2 * Page + Page - 1, 1), Is.True);
            Assert.That(memory.IsValidRange(i * 2 * Page + Page, 1), Is.False);
        }
    }

    private static SafeFileDescriptor Duplicate(SafeFileDescriptor fd)
    {
        int copy = Mono.Unix.Native.Syscall.dup((int)fd.DangerousGetHandle());
        Assert.That(copy, Is.GreaterThanOrEqualTo(0));
        return new SafeFileDescriptor(copy);
    }

    [Test]
    public void Created_regions_are_sealed()
    {
        using var memory = GuestMemory.Create(4 * Page);

        Assert.That(memory.Regions[0].IsSealed, Is.True);
        Assert.That(memory.Regions[0].IsGuarded, Is.False);
        Assert.That(TestFiles.TryResize(memory.Regions[0].Fd, Page), Is.EqualTo(1), "EPERM: nobody can shrink our guest RAM");
    }

    [Test]
    public void A_received_sealable_region_is_sealed_against_shrinking()
    {
        using var memory = new GuestMemory();
        SafeFileDescriptor fd = TestFiles.SealableMemfd(4 * Page);

        GuestMemoryRegion region = memory.AddRegion(0, 4 * Page, 0x7000_0000, fd, 0);

        Assert.That(region.IsSealed, Is.True);
        Assert.That(region.IsGuarded, Is.False);
        Assert.That(TestFiles.TryResize(fd, Page), Is.EqualTo(1), "EPERM");
    }

    [Test]
    public void An_unsealable_region_is_refused_when_unsealed_memory_is_refused()
    {
        using var memory = new GuestMemory { UnsealedRegions = UnsealedMemoryPolicy.Refuse };
        SafeFileDescriptor fd = TestFiles.UnsealableMemfd(4 * Page);

        Assert.That(() => memory.AddRegion(0, 4 * Page, 0x7000_0000, fd, 0),
            Throws.InstanceOf<GuestMemoryException>().With.Message.Contains("not sealed against shrinking"));
        Assert.That(fd.IsClosed, Is.True, "the region's fd was taken and closed");
        Assert.That(memory.Regions, Is.Empty);
    }

    [Test]
    public async Task An_unsealable_region_is_guarded_and_a_truncation_is_reported()
    {
        using var memory = new GuestMemory();
        SafeFileDescriptor fd = TestFiles.UnsealableMemfd(8 * Page);
        var truncated = new TaskCompletionSource<GuestMemoryRegion>(TaskCreationOptions.RunContinuationsAsynchronously);
        memory.Truncated += r => truncated.TrySetResult(r);
        GuestMemoryRegion region = memory.AddRegion(0x10000, 8 * Page, 0x7000_0000, fd, 0);
        memory.WriteUInt32(0x10000 + (6 * Page), 0xdeadbeef);
        Assert.That(region.IsGuarded, Is.True);
        Assert.That(region.IsSealed, Is.False);

        TestFiles.Resize(fd, Page);

        Assert.That(memory.ReadUInt32(0x10000 + (6 * Page)), Is.Zero, "the vanished page reads as zeroes, and the process lives");
        Assert.That(await truncated.Task.WaitAsync(TimeSpan.FromSeconds(30)), Is.SameAs(region));
    }

    [Test]
    public void A_buffer_may_span_adjacent_regions_but_not_a_gap()
    {
        using var memory = new GuestMemory();
        SafeFileDescriptor fd = MemFd.Create("adjacent", 4 * Page);
        int copy = Mono.Unix.Native.Syscall.dup((int)fd.DangerousGetHandle());
        int copy2 = Mono.Unix.Native.Syscall.dup((int)fd.DangerousGetHandle());
        memory.AddRegion(0, Page, 0x7000_0000, fd, 0);
        memory.AddRegion(Page, Page, 0x7100_0000, new SafeFileDescriptor(copy), Page);
        memory.AddRegion(3 * Page, Page, 0x7200_0000, new SafeFileDescriptor(copy2), 2 * Page);

        Assert.Multiple(() =>
        {
            Assert.That(memory.IsMappedRange(Page - 8, 16), Is.True, "across two adjacent regions");
            Assert.That(memory.IsMappedRange(0, 2 * Page), Is.True);
            Assert.That(memory.IsValidRange(Page - 8, 16), Is.False, "a ring area must lie in one region");
            Assert.That(memory.IsMappedRange(Page, Page + 1), Is.False, "into the gap");
            Assert.That(memory.IsMappedRange(2 * Page, 8), Is.False, "inside the gap");
            Assert.That(memory.IsMappedRange(3 * Page, Page), Is.True);
            Assert.That(memory.IsMappedRange(3 * Page, Page + 1), Is.False, "past the end");
            Assert.That(memory.IsMappedRange(ulong.MaxValue, 2), Is.False, "wrapping");
        });

        memory.Write(Page - 4, [1, 2, 3, 4, 5, 6, 7, 8]);
        byte[] back = new byte[8];
        memory.Read(Page - 4, back);
        Assert.That(back, Is.EqualTo(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }));
    }
}
