using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using NUnit.Framework;
using Vmm.Core.Posix;
using Vmm.Core.Posix.IoUring;
using Vmm.Core.Posix.Storage;
using static Vmm.Core.Posix.Interop.IoUring;

namespace Vmm.Core.Tests.Posix.Storage;

/// <summary>The structures shared with the kernel match include/uapi/linux/io_uring.h and linux/stat.h byte for byte.</summary>
[TestFixture]
public sealed class IoUringLayoutTests
{
    [Test]
    public void Struct_sizes_match_the_kernel_headers()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Unsafe.SizeOf<Params>(), Is.EqualTo(120), "io_uring_params");
            Assert.That(Unsafe.SizeOf<SqringOffsets>(), Is.EqualTo(40), "io_sqring_offsets");
            Assert.That(Unsafe.SizeOf<CqringOffsets>(), Is.EqualTo(40), "io_cqring_offsets");
            Assert.That(Unsafe.SizeOf<Sqe>(), Is.EqualTo(64), "io_uring_sqe");
            Assert.That(Unsafe.SizeOf<Cqe>(), Is.EqualTo(16), "io_uring_cqe");
            Assert.That(Unsafe.SizeOf<Probe>(), Is.EqualTo(16), "io_uring_probe");
            Assert.That(Unsafe.SizeOf<ProbeOp>(), Is.EqualTo(8), "io_uring_probe_op");
            Assert.That(Unsafe.SizeOf<Interop.FileIo.Statx>(), Is.EqualTo(256), "statx");
            Assert.That(Unsafe.SizeOf<IoVector>(), Is.EqualTo(16), "iovec");
        });
    }

    [Test]
    public void Field_offsets_match_the_kernel_headers()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Marshal.OffsetOf<Sqe>(nameof(Sqe.Fd)), Is.EqualTo((nint)4));
            Assert.That(Marshal.OffsetOf<Sqe>(nameof(Sqe.Off)), Is.EqualTo((nint)8));
            Assert.That(Marshal.OffsetOf<Sqe>(nameof(Sqe.Addr)), Is.EqualTo((nint)16));
            Assert.That(Marshal.OffsetOf<Sqe>(nameof(Sqe.Len)), Is.EqualTo((nint)24));
            Assert.That(Marshal.OffsetOf<Sqe>(nameof(Sqe.OpFlags)), Is.EqualTo((nint)28));
            Assert.That(Marshal.OffsetOf<Sqe>(nameof(Sqe.UserData)), Is.EqualTo((nint)32));
            Assert.That(Marshal.OffsetOf<Sqe>(nameof(Sqe.BufIndex)), Is.EqualTo((nint)40));
            Assert.That(Marshal.OffsetOf<Params>(nameof(Params.SqOff)), Is.EqualTo((nint)40));
            Assert.That(Marshal.OffsetOf<Params>(nameof(Params.CqOff)), Is.EqualTo((nint)80));
            Assert.That(Marshal.OffsetOf<Cqe>(nameof(Cqe.Res)), Is.EqualTo((nint)8));
            Assert.That(Marshal.OffsetOf<Interop.FileIo.Statx>(nameof(Interop.FileIo.Statx.Size)), Is.EqualTo((nint)40));
            Assert.That(Marshal.OffsetOf<Interop.FileIo.Statx>(nameof(Interop.FileIo.Statx.DioMemAlign)), Is.EqualTo((nint)152));
            Assert.That(Marshal.OffsetOf<Interop.FileIo.Statx>(nameof(Interop.FileIo.Statx.DioOffsetAlign)), Is.EqualTo((nint)156));
        });
    }

    [Test]
    public void This_machine_has_io_uring_with_every_operation_the_engine_uses()
    {
        IoUringAvailability availability = IoUringSupport.Availability;
        Assert.That(availability.Available, Is.True, $"io_uring unavailable here: {availability.Reason}");
    }

    [Test]
    public void A_ring_maps_its_queues_and_round_trips_a_nop()
    {
        using IoUringRing ring = IoUringRing.Create(8, 16);
        Assert.That(ring.SqEntries, Is.EqualTo(8));
        Assert.That(ring.CqEntries, Is.EqualTo(16));
        Span<Cqe> done = stackalloc Cqe[4];
        for (ulong round = 0; round < 40; round++)
        {
            unsafe
            {
                Sqe* sqe = ring.NextSqe();
                Assert.That(sqe is not null, Is.True);
                sqe->Opcode = IORING_OP_NOP;
                sqe->UserData = round;
            }

            Assert.That(ring.Submit(waitFor: 1), Is.Zero);
            Assert.That(ring.Reap(done), Is.EqualTo(1), "one completion per nop, also after the rings wrapped");
            Assert.That((done[0].UserData, done[0].Res), Is.EqualTo((round, 0)));
        }
    }

    [Test]
    public void A_full_submission_ring_says_so_until_submitted()
    {
        using IoUringRing ring = IoUringRing.Create(4, 8);
        Assert.That(ring.SqEntries, Is.EqualTo(4));
        unsafe
        {
            for (int i = 0; i < 4; i++)
            {
                Sqe* sqe = ring.NextSqe();
                Assert.That(sqe is not null, Is.True);
                sqe->Opcode = IORING_OP_NOP;
                sqe->UserData = (ulong)i;
            }

            Assert.That(ring.NextSqe() is null, Is.True, "no fifth entry before the kernel took the first four");
            Assert.That(ring.Submit(waitFor: 4), Is.Zero);
            Assert.That(ring.NextSqe() is not null, Is.True, "room again once submitted");
        }
    }
}
