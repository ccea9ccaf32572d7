using System.Runtime.InteropServices;
using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Tests.Channel;
using Vmm.VhostUser.Protocol;
using static Vmm.VhostUser.Tests.Backend.ScriptedFrontend;

namespace Vmm.VhostUser.Tests.Backend;

/// <summary>
/// Dirty-page logging (vhost-user.rst, "Migration"): what the back-end marks in a log the
/// test shares with SET_LOG_BASE, for each kind of guest write it makes.
/// </summary>
[TestFixture]
[Category("Backend")]
public sealed class BackendDirtyLogTests
{
    private const ulong Base = VirtioFeatures.VERSION_1 | VhostUserVirtioFeatures.PROTOCOL_FEATURES;
    private const ulong Page = DirtyPageLog.PageSize;

    /// <summary>Where the tests tell the back-end to log the used ring: outside guest memory (the spec allows it), so its bits cannot be confused with data.</summary>
    private const ulong UsedRingLogAddress = 24UL << 20;

    /// <summary>The log covers 32 MiB: guest memory (16 MiB) and <see cref="UsedRingLogAddress"/>.</summary>
    private const ulong LogCovers = 32UL << 20;

    [Test]
    public async Task Backend_offers_LOG_ALL_and_LOG_SHMFD()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();

        ulong features = await frontend.GetU64Async(VhostUserRequest.GET_FEATURES);
        var protocol = (VhostUserProtocolFeatures)await frontend.GetU64Async(VhostUserRequest.GET_PROTOCOL_FEATURES);

        Assert.That(features & VhostUserVirtioFeatures.LOG_ALL, Is.Not.Zero);
        Assert.That(protocol & VhostUserProtocolFeatures.LOG_SHMFD, Is.EqualTo(VhostUserProtocolFeatures.LOG_SHMFD));
    }

    [TestCase(0UL, TestName = "A_read_marks_its_data_pages_the_used_element_and_the_used_index(split)")]
    [TestCase(VirtioFeatures.RING_PACKED, TestName = "A_read_marks_its_data_pages_the_used_element_and_the_used_index(packed)")]
    public async Task A_read_marks_its_data_pages_the_used_element_and_the_used_index(ulong ring)
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        ulong features = Base | ring | VhostUserVirtioFeatures.LOG_ALL;
        BlkQueue queue = await frontend.StartDeviceAsync(64, features);
        using DirtyPageLog log = DirtyPageLog.Create(LogCovers);
        await SetLogBaseAsync(frontend, log);
        await SetRingLogAsync(frontend, queue);
        log.HarvestAndClear(new ulong[Words(log)]);

        // Two pages of data: a read writes them (device-writable), and a write only reads its buffer.
        ulong readBuffer = frontend.Allocator.Allocate(2 * Page, Page);
        ulong writeBuffer = frontend.Allocator.Allocate(Page, Page);
        Assert.That(queue.Complete(queue.SubmitRead(0, [readBuffer], (uint)(2 * Page))), Is.Zero);
        ulong[] afterRead = Harvest(log);
        Assert.That(queue.Complete(queue.SubmitWrite(8, writeBuffer, (uint)Page)), Is.Zero);
        ulong[] afterWrite = Harvest(log);

        Assert.That(IsSet(afterRead, readBuffer / Page) && IsSet(afterRead, (readBuffer / Page) + 1), Is.True, "both data pages of the read");
        Assert.That(IsSet(afterWrite, writeBuffer / Page), Is.False, "a write's data buffer is only read by the device");
        if (ring == 0)
        {
            // Split: the used element and used idx sit in the used ring's first page here (a
            // 64-entry ring), logged from log_guest_addr, not from where the ring really is.
            Assert.That(IsSet(afterRead, UsedRingLogAddress / Page), Is.True, "used ring, at log_guest_addr");
            Assert.That(IsSet(afterWrite, UsedRingLogAddress / Page), Is.True, "used ring of the write");
        }
        else
        {
            // Packed: the used descriptor is written into the descriptor ring, logged where it is.
            Assert.That(IsSet(afterRead, queue.Driver.Params.DescriptorArea / Page), Is.True, "descriptor ring");
            Assert.That(IsSet(afterWrite, queue.Driver.Params.DescriptorArea / Page), Is.True, "descriptor ring of the write");
        }
    }

    [Test]
    public async Task Once_VHOST_VRING_F_LOG_is_cleared_the_ring_is_not_logged_but_the_data_is()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        ulong features = Base | VhostUserVirtioFeatures.LOG_ALL;
        BlkQueue queue = await frontend.StartDeviceAsync(64, features);
        using DirtyPageLog log = DirtyPageLog.Create(LogCovers);
        await SetLogBaseAsync(frontend, log);
        await SetRingLogAsync(frontend, queue);
        await SetRingLogAsync(frontend, queue, log: false);
        log.HarvestAndClear(new ulong[Words(log)]);

        ulong buffer = frontend.Allocator.Allocate(Page, Page);
        Assert.That(queue.Complete(queue.SubmitRead(0, [buffer], (uint)Page)), Is.Zero);
        ulong[] dirty = Harvest(log);

        Assert.That(IsSet(dirty, buffer / Page), Is.True, "data");
        Assert.That(IsSet(dirty, UsedRingLogAddress / Page), Is.False, "used ring");
    }

    [Test]
    public async Task LOG_ALL_turned_on_and_off_by_SET_FEATURES_under_a_running_ring_starts_and_stops_the_marks()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        BlkQueue queue = await frontend.StartDeviceAsync(64, Base);
        using DirtyPageLog log = DirtyPageLog.Create(LogCovers);
        await SetLogBaseAsync(frontend, log);
        ulong buffer = frontend.Allocator.Allocate(Page, Page);

        Assert.That(queue.Complete(queue.SubmitRead(0, [buffer], (uint)Page)), Is.Zero);
        Assert.That(Harvest(log).All(w => w == 0), Is.True, "nothing marked before LOG_ALL");

        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base | VhostUserVirtioFeatures.LOG_ALL)), Is.Zero);
        Assert.That(queue.Complete(queue.SubmitRead(0, [buffer], (uint)Page)), Is.Zero);
        Assert.That(IsSet(Harvest(log), buffer / Page), Is.True, "marked with LOG_ALL");

        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
        Assert.That(queue.Complete(queue.SubmitRead(0, [buffer], (uint)Page)), Is.Zero);
        Assert.That(Harvest(log).All(w => w == 0), Is.True, "nothing marked after LOG_ALL is off again");
    }

    [Test]
    public async Task The_test_only_option_offers_LOG_ALL_but_marks_only_the_ring_not_the_data()
    {
        await using var backend = new BackendFixture(options: new VhostUserBackendOptions { TestIgnoreDirtyLog = true });
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        ulong features = Base | VhostUserVirtioFeatures.LOG_ALL;
        BlkQueue queue = await frontend.StartDeviceAsync(64, features);
        using DirtyPageLog log = DirtyPageLog.Create(LogCovers);
        await SetLogBaseAsync(frontend, log);
        await SetRingLogAsync(frontend, queue);
        ulong buffer = frontend.Allocator.Allocate(Page, Page);

        Assert.That(queue.Complete(queue.SubmitRead(0, [buffer], (uint)Page)), Is.Zero);

        ulong[] dirty = Harvest(log);
        Assert.That(IsSet(dirty, buffer / Page), Is.False, "the data page of the read");
        Assert.That(IsSet(dirty, UsedRingLogAddress / Page), Is.True, "the used ring, at log_guest_addr");
        Assert.That(dirty.Sum(w => (long)ulong.PopCount(w)), Is.EqualTo(1), "nothing but the used ring's page");
    }

    [Test]
    public async Task A_new_log_under_a_running_ring_takes_every_mark_once_its_reply_is_out()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        ulong features = Base | VhostUserVirtioFeatures.LOG_ALL;
        BlkQueue queue = await frontend.StartDeviceAsync(64, features);
        await SetRingLogAsync(frontend, queue);
        ulong buffer = frontend.Allocator.Allocate(Page, Page);

        // Reads run all the time on another thread while the log is replaced again and again.
        using var stop = new CancellationTokenSource();
        int reads = 0;
        Task reader = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                Assert.That(queue.Complete(queue.SubmitRead(0, [buffer], (uint)Page)), Is.Zero);
                Interlocked.Increment(ref reads);
            }
        });

        DirtyPageLog? previous = null;
        try
        {
            for (int i = 0; i < 50; i++)
            {
                var next = DirtyPageLog.Create(LogCovers);
                await SetLogBaseAsync(frontend, next);
                if (previous is not null)
                {
                    // The reply came: the back-end is off the old log. Harvest it once; nothing may land there after.
                    Harvest(previous);
                    int readsBefore = Volatile.Read(ref reads);
                    await WaitForAsync(() => Volatile.Read(ref reads) >= readsBefore + 2);
                    Assert.That(Harvest(previous).All(w => w == 0), Is.True, $"round {i}: a mark landed in a log already replaced");
                    previous.Dispose();
                }

                previous = next;
            }

            int before = Volatile.Read(ref reads);
            await WaitForAsync(() => Volatile.Read(ref reads) >= before + 2);
            Assert.That(IsSet(Harvest(previous!), buffer / Page), Is.True, "the last log takes the marks");
        }
        finally
        {
            await stop.CancelAsync();
            await reader;
            previous?.Dispose();
        }

        Assert.That(backend.Serving.IsCompleted, Is.False);
    }

    [Test]
    public async Task SET_LOG_FD_is_signalled_after_a_batch_that_marked_pages()
    {
        await using var backend = new BackendFixture();
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        ulong features = Base | VhostUserVirtioFeatures.LOG_ALL;
        BlkQueue queue = await frontend.StartDeviceAsync(64, features);
        using DirtyPageLog log = DirtyPageLog.Create(LogCovers);
        await SetLogBaseAsync(frontend, log);
        using var logCall = new EventFd();
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_LOG_FD, default, [logCall.Handle]), Is.Zero);
        ulong buffer = frontend.Allocator.Allocate(Page, Page);

        Assert.That(queue.Complete(queue.SubmitRead(0, [buffer], (uint)Page)), Is.Zero);

        Assert.That(logCall.Wait(10_000), Is.True);
    }

    [Test]
    public async Task SET_LOG_FD_with_a_pipe_is_refused()
    {
        await using var backend = new BackendFixture();
        using (ScriptedFrontend frontend = await backend.ConnectAsync())
        {
            await frontend.StartDeviceAsync(64, Base | VhostUserVirtioFeatures.LOG_ALL);
            (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
            using (read)
            using (write)
            {
                Assert.That(await frontend.AckAsync(VhostUserRequest.SET_LOG_FD, default, [read]), Is.Not.Zero);
            }
        }

        await backend.AssertServesWellBehavedFrontendAsync();
    }

    [TestCase("too small", TestName = "A_bad_SET_LOG_BASE_ends_the_connection(log smaller than guest memory)")]
    [TestCase("offset", TestName = "A_bad_SET_LOG_BASE_ends_the_connection(offset beyond the file)")]
    [TestCase("overflow", TestName = "A_bad_SET_LOG_BASE_ends_the_connection(size plus offset overflows)")]
    [TestCase("eventfd", TestName = "A_bad_SET_LOG_BASE_ends_the_connection(an eventfd for a file)")]
    [TestCase("unsealable", TestName = "A_bad_SET_LOG_BASE_ends_the_connection(a file that can shrink, with --memory strict)")]
    [TestCase("no LOG_SHMFD", TestName = "A_bad_SET_LOG_BASE_ends_the_connection(LOG_SHMFD not negotiated)")]
    public async Task A_bad_SET_LOG_BASE_ends_the_connection(string fault)
    {
        await using var backend = new BackendFixture(options: new VhostUserBackendOptions { UnsealedMemory = UnsealedMemoryPolicy.Refuse });
        using ScriptedFrontend frontend = await backend.ConnectAsync();
        if (fault == "no LOG_SHMFD")
        {
            ulong offered = (ulong)VhostUserBackendOptions.Implemented & ~(ulong)VhostUserProtocolFeatures.LOG_SHMFD;
            await frontend.HandshakeAsync((VhostUserProtocolFeatures)offered);
        }
        else
        {
            await frontend.HandshakeAsync();
        }

        Assert.That(await frontend.SetMemTableAsync(), Is.Zero);
        using DirtyPageLog log = DirtyPageLog.Create(LogCovers);
        using var eventFd = new EventFd();
        using SafeFileDescriptor unsealable = TestMemfd.Create("unsealable-log", (long)log.Size, sealable: false);
        (ulong size, ulong offset, SafeHandle fd) = fault switch
        {
            "too small" => (DirtyPageLog.SizeFor(MemorySize) / 2, 0UL, log.Fd!),
            "offset" => (8UL, log.Size, (SafeHandle)log.Fd!),
            "overflow" => (ulong.MaxValue - 7, 16UL, log.Fd!),
            "eventfd" => (log.Size, 0UL, eventFd.Handle),
            "unsealable" => (log.Size, 0UL, unsealable),
            _ => (log.Size, 0UL, log.Fd!),
        };
        byte[] payload = new byte[VhostUserLog.Size];
        new VhostUserLog(size, offset).Write(payload);

        await frontend.SendAsync(VhostUserRequest.SET_LOG_BASE, payload, [fd]);

        await frontend.ExpectDisconnectAsync();
        await backend.AssertServesWellBehavedFrontendAsync();
    }

    private static async Task SetLogBaseAsync(ScriptedFrontend frontend, DirtyPageLog log)
    {
        byte[] payload = new byte[VhostUserLog.Size];
        new VhostUserLog(log.Size, 0).Write(payload);

        // As QEMU: no NEED_REPLY, yet a reply comes with LOG_SHMFD (a u64 0).
        await frontend.SendAsync(VhostUserRequest.SET_LOG_BASE, payload, [log.Fd!]);
        using VhostUserMessage reply = await frontend.ReceiveAsync();
        VhostUserCodec.ValidateReplyHeader(reply.Header, VhostUserRequest.SET_LOG_BASE);
        Assert.That(VhostUserCodec.ReadU64(reply.Payload.Span), Is.Zero, "SET_LOG_BASE reply");
    }

    /// <summary>SET_VRING_ADDR again with the same addresses, the LOG flag and <see cref="UsedRingLogAddress"/>, as QEMU does when migration starts.</summary>
    private static async Task SetRingLogAsync(ScriptedFrontend frontend, BlkQueue queue, bool log = true)
    {
        byte[] addr = new byte[VhostUserVringAddr.Size];
        new VhostUserVringAddr(
            0,
            log ? VhostUserVringAddr.VHOST_VRING_F_LOG : 0,
            frontend.UserAddress(queue.Driver.Params.DescriptorArea),
            frontend.UserAddress(queue.Driver.Params.DeviceArea),
            frontend.UserAddress(queue.Driver.Params.DriverArea),
            UsedRingLogAddress).Write(addr);
        Assert.That(await frontend.AckAsync(VhostUserRequest.SET_VRING_ADDR, addr), Is.Zero, "SET_VRING_ADDR");
    }

    private static int Words(DirtyPageLog log) => (int)(log.Size / 8);

    private static ulong[] Harvest(DirtyPageLog log)
    {
        var bitmap = new ulong[Words(log)];
        log.HarvestAndClear(bitmap);
        return bitmap;
    }

    private static bool IsSet(ulong[] bitmap, ulong page) => (bitmap[page / 64] & (1UL << (int)(page % 64))) != 0;

    private static async Task WaitForAsync(Func<bool> condition)
    {
        DateTime deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), "the reads stopped");
            await Task.Delay(1);
        }
    }
}
