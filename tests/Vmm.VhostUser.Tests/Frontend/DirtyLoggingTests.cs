using Akka.Actor;
using Akka.TestKit;
using NUnit.Framework;
using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Core.Posix;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Frontend;
using Vmm.VhostUser.Protocol;
using Vmm.TestKit;

namespace Vmm.VhostUser.Tests.Frontend;

/// <summary>
/// The front-end's half of dirty-page logging (vhost-user.rst, "Migration"): negotiation of
/// VHOST_F_LOG_ALL and LOG_SHMFD, SET_LOG_BASE with a sealed memfd sized for guest memory,
/// LOG_ALL in SET_FEATURES and VHOST_VRING_F_LOG in SET_VRING_ADDR while logging, harvesting
/// what the back-end marked, and the log sent again in the replay after a reconnect.
/// </summary>
[TestFixture]
public sealed class DirtyLoggingTests : AkkaTest
{
    private const VhostUserProtocolFeatures Offered = VhostUserProtocolFeatures.REPLY_ACK | VhostUserProtocolFeatures.LOG_SHMFD;
    private const ulong LoggingFeatures = ScriptedBackend.DefaultFeatures | VhostUserVirtioFeatures.LOG_ALL;

    private readonly EventNotifierLoop _loop = new("dirty-logging-tests");

    [TearDown]
    public void StopLoop() => _loop.Dispose();

    // --- The connection -------------------------------------------------------------------------

    [TestCase(true, true, true)]
    [TestCase(false, true, false)]
    [TestCase(true, false, false)]
    [TestCase(false, false, false)]
    public async Task Logging_is_supported_only_when_the_backend_offers_LOG_ALL_and_LOG_SHMFD(bool logAll, bool logShmfd, bool supported)
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            ulong features = ScriptedBackend.DefaultFeatures | (logAll ? VhostUserVirtioFeatures.LOG_ALL : 0);
            VhostUserProtocolFeatures offered = VhostUserProtocolFeatures.REPLY_ACK | (logShmfd ? VhostUserProtocolFeatures.LOG_SHMFD : 0);
            Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
            await backend.ServeHandshakeAsync(features, offered);
            await handshake;

            Assert.That(frontend.HasProtocolFeature(VhostUserProtocolFeatures.LOG_SHMFD), Is.EqualTo(logShmfd), "LOG_SHMFD acked exactly when offered");
            Assert.That(frontend.SupportsDirtyLogging, Is.EqualTo(supported));
        }
    }

    [Test]
    public async Task SET_FEATURES_carries_LOG_ALL_only_while_logging_and_never_without_the_offer()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            await HandshakeAsync(frontend, backend, LoggingFeatures);

            Task<ulong> on = frontend.SetFeaturesAsync(ScriptedBackend.DefaultFeatures, logAll: true);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_FEATURES))
            {
                Assert.That(VhostUserCodec.ReadU64(m.Payload.Span) & VhostUserVirtioFeatures.LOG_ALL, Is.Not.Zero);
            }

            await on;
            Task<ulong> off = frontend.SetFeaturesAsync(LoggingFeatures);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_FEATURES))
            {
                Assert.That(VhostUserCodec.ReadU64(m.Payload.Span) & VhostUserVirtioFeatures.LOG_ALL, Is.Zero, "the guest's features never turn logging on");
            }

            await off;
        }

        (frontend, backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            await HandshakeAsync(frontend, backend, ScriptedBackend.DefaultFeatures);
            await Assert.ThrowsAsync<InvalidOperationException>(async () => await frontend.SetFeaturesAsync(ScriptedBackend.DefaultFeatures, logAll: true));
        }
    }

    [Test]
    public async Task SET_LOG_BASE_sends_a_sealed_memfd_sized_one_bit_per_page_in_whole_words()
    {
        // 64 MiB + 1 page: 16385 pages, 257 words, 2056 bytes.
        using var memory = GuestMemory.Create((64UL << 20) + 4096);
        using var log = VhostUserDirtyLog.For(memory);
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            await HandshakeAsync(frontend, backend, LoggingFeatures);
            Task sent = frontend.SetLogBaseAsync(log.Current);
            using VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_LOG_BASE);
            Assert.That(VhostUserCodec.NeedsReply(m.Header), Is.False, "answered without NEED_REPLY, as QEMU expects");
            VhostUserLog description = VhostUserLog.Read(m.Payload.Span);
            Assert.That(description.MmapSize, Is.EqualTo(2056UL));
            Assert.That(description.MmapOffset, Is.Zero);
            Assert.That(m.Fds, Has.Count.EqualTo(1));
            using SafeFileDescriptor fd = m.TakeFd(0);
            Assert.That(MemFd.GetFileSize(fd), Is.EqualTo(2056UL));
            Assert.That(MemFd.GetSeals(fd) & (FileSeals.Shrink | FileSeals.Grow), Is.EqualTo(FileSeals.Shrink | FileSeals.Grow));
            await backend.ReplyU64Async(VhostUserRequest.SET_LOG_BASE, 0);
            await sent;
        }
    }

    [Test]
    public async Task SET_LOG_BASE_takes_an_empty_answer_or_eight_bytes_of_anything()
    {
        using var memory = GuestMemory.Create(1 << 20);
        using var log = VhostUserDirtyLog.For(memory);
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            await HandshakeAsync(frontend, backend, LoggingFeatures);
            Task empty = frontend.SetLogBaseAsync(log.Current);
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_LOG_BASE);
            await backend.ReplyAsync(VhostUserRequest.SET_LOG_BASE, []);
            await empty;

            // libvhost-user (qemu-storage-daemon) answers with the request's first 8 bytes, the log's size.
            Task echoed = frontend.SetLogBaseAsync(log.Current);
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_LOG_BASE);
            await backend.ReplyU64Async(VhostUserRequest.SET_LOG_BASE, log.Current.Size);
            await echoed;
            Assert.That(frontend.IsDead, Is.False);
        }
    }

    [Test]
    public async Task SET_VRING_ADDR_sets_VHOST_VRING_F_LOG_and_the_used_ring_address_while_logging()
    {
        (VhostUserFrontendConnection frontend, ScriptedBackend backend) = ScriptedBackend.CreatePair();
        using (frontend)
        using (backend)
        {
            await HandshakeAsync(frontend, backend, LoggingFeatures);
            var ring = new VhostUserRingAddresses(0, 64, 0x7000_1000, 0x7000_2000, 0x7000_3000, 0);
            Task logged = frontend.SetRingAddressAsync(ring with { LogGuestAddress = 0x3000 });
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_ADDR))
            {
                VhostUserVringAddr addr = VhostUserVringAddr.Read(m.Payload.Span);
                Assert.That(addr.Flags, Is.EqualTo(VhostUserVringAddr.VHOST_VRING_F_LOG));
                Assert.That(addr.Log, Is.EqualTo(0x3000UL));
                Assert.That(addr.Used, Is.EqualTo(0x7000_3000UL));
            }

            await logged;
            Task plain = frontend.SetRingAddressAsync(ring);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_ADDR))
            {
                VhostUserVringAddr addr = VhostUserVringAddr.Read(m.Payload.Span);
                Assert.That((addr.Flags, addr.Log), Is.EqualTo((0u, 0UL)));
            }

            await plain;
        }
    }

    [Test]
    public void Pages_the_backend_marks_are_harvested_once_and_cleared()
    {
        using var memory = GuestMemory.Create(1 << 24);
        using var log = VhostUserDirtyLog.For(memory);

        // The back-end's view: the same memfd, mapped on its side.
        using DirtyPageLog backendView = DirtyPageLog.Map(log.Current.Fd!, log.Current.Size, 0);
        backendView.MarkDirty(0x5000, 1);
        backendView.MarkDirty((200 * 4096) - 1, 2);

        var bitmap = new ulong[DirtyPageBitmap.WordsFor(memory)];
        Assert.That(log.Harvest(bitmap), Is.EqualTo(3));
        Assert.That(DirtyPageBitmap.Pages(bitmap), Is.EqualTo(new ulong[] { 0x5000, 199 * 4096, 200 * 4096 }));
        Assert.That(log.Harvest(new ulong[bitmap.Length]), Is.Zero, "harvesting cleared the bits");
    }

    [Test]
    public void A_replaced_log_keeps_its_bits_for_the_next_harvest()
    {
        using var memory = GuestMemory.Create(1 << 20);
        using var log = VhostUserDirtyLog.For(memory);
        using (DirtyPageLog old = DirtyPageLog.Map(log.Current.Fd!, log.Current.Size, 0))
        {
            old.MarkDirty(0x2000, 1);
        }

        memory.AddRegion(new GuestMemoryRange(1 << 24, 1 << 20));
        Assert.That(log.IsTooSmallFor(memory), Is.True);
        DirtyPageLog grown = VhostUserDirtyLog.CreateFor(memory);
        log.Replace(grown);
        using (DirtyPageLog view = DirtyPageLog.Map(grown.Fd!, grown.Size, 0))
        {
            view.MarkDirty((1 << 24) + 0x1000, 1);
        }

        var bitmap = new ulong[DirtyPageBitmap.WordsFor(memory)];
        Assert.That(log.Harvest(bitmap), Is.EqualTo(2));
        Assert.That(DirtyPageBitmap.Pages(bitmap), Is.EqualTo(new ulong[] { 0x2000, (1 << 24) + 0x1000 }));
    }

    // --- The connection actor -------------------------------------------------------------------

    [Test]
    public async Task StartDirtyLogging_sends_the_log_LOG_ALL_and_logged_rings_and_StopDirtyLogging_clears_them()
    {
        var backends = new BackendFactory();
        using var rig = new TestRing();
        (ConnectionHarness h, ScriptedBackend backend) = await StartWithQueueAsync(backends, rig, LoggingFeatures);
        using (backend)
        {
            h.Connection.Tell(StartDirtyLogging.Instance, TestActor);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_LOG_BASE))
            {
                Assert.That(VhostUserLog.Read(m.Payload.Span).MmapSize, Is.EqualTo(DirtyPageLog.SizeFor(1 << 20)));
                await backend.ReplyU64Async(VhostUserRequest.SET_LOG_BASE, 0);
            }

            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_FEATURES))
            {
                Assert.That(VhostUserCodec.ReadU64(m.Payload.Span) & VhostUserVirtioFeatures.LOG_ALL, Is.Not.Zero);
            }

            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_ADDR))
            {
                VhostUserVringAddr addr = VhostUserVringAddr.Read(m.Payload.Span);
                Assert.That((addr.Flags, addr.Log), Is.EqualTo((VhostUserVringAddr.VHOST_VRING_F_LOG, 0x3000UL)), "the used ring's guest address");
            }

            DirtyLoggingStarted started = await ExpectMsgAsync<DirtyLoggingStarted>();
            Assert.That(h.Model.Snapshot.DirtyLog, Is.SameAs(started.Log));

            h.Connection.Tell(StopDirtyLogging.Instance, TestActor);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_FEATURES))
            {
                Assert.That(VhostUserCodec.ReadU64(m.Payload.Span) & VhostUserVirtioFeatures.LOG_ALL, Is.Zero);
            }

            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_VRING_ADDR))
            {
                Assert.That(VhostUserVringAddr.Read(m.Payload.Span).Flags, Is.Zero);
            }

            await ExpectMsgAsync<DirtyLoggingStopped>();
            Assert.That(h.Model.Snapshot.DirtyLog, Is.Null);
            Assert.That(started.Log.Harvest(new ulong[64]), Is.Zero, "a stopped log is closed");
        }
    }

    [Test]
    public async Task Memory_that_grows_past_the_log_gets_a_larger_one_after_the_memory_update()
    {
        var backends = new BackendFactory();
        using var rig = new TestRing();
        (ConnectionHarness h, ScriptedBackend backend) = await StartWithQueueAsync(backends, rig, LoggingFeatures);
        using (backend)
        {
            h.Connection.Tell(StartDirtyLogging.Instance, TestActor);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_LOG_BASE, ack: null))
            using (SafeFileDescriptor fd = m.TakeFd(0))
            using (DirtyPageLog first = DirtyPageLog.Map(fd, VhostUserLog.Read(m.Payload.Span).MmapSize, 0))
            {
                first.MarkDirty(0x4000, 1);
                await backend.ReplyU64Async(VhostUserRequest.SET_LOG_BASE, 0);
            }

            await backend.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES);
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ADDR);
            DirtyLoggingStarted started = await ExpectMsgAsync<DirtyLoggingStarted>();

            rig.Memory.AddRegion(new GuestMemoryRange(64UL << 20, 1 << 20));
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_MEM_TABLE);
            using (VhostUserMessage m = await backend.ExpectAsync(VhostUserRequest.SET_LOG_BASE, ack: null))
            {
                Assert.That(VhostUserLog.Read(m.Payload.Span).MmapSize, Is.EqualTo(DirtyPageLog.SizeFor(65UL << 20)), "covers the new region");
                using SafeFileDescriptor fd = m.TakeFd(0);
                using DirtyPageLog grown = DirtyPageLog.Map(fd, VhostUserLog.Read(m.Payload.Span).MmapSize, 0);
                grown.MarkDirty((64UL << 20) + 0x1000, 1);
                await backend.ReplyU64Async(VhostUserRequest.SET_LOG_BASE, 0);
            }

            // Both logs' bits reach the host: the replaced one is harvested once more.
            ulong expected = (64UL << 20) + 0x1000;
            var bitmap = new ulong[DirtyPageBitmap.WordsFor(rig.Memory)];
            long moved = 0;
            await AwaitConditionAsync(() =>
            {
                moved += started.Log.Harvest(bitmap);
                return Task.FromResult(moved == 2);
            }, TimeSpan.FromSeconds(10));
            Assert.That(DirtyPageBitmap.Pages(bitmap), Is.EqualTo(new ulong[] { 0x4000, expected }));
        }
    }

    [Test]
    public async Task StartDirtyLogging_fails_with_NotSupported_when_the_backend_cannot_log()
    {
        var backends = new BackendFactory();
        using var rig = new TestRing();
        (ConnectionHarness h, ScriptedBackend backend) = await StartWithQueueAsync(backends, rig, ScriptedBackend.DefaultFeatures);
        using (backend)
        {
            h.Connection.Tell(StartDirtyLogging.Instance, TestActor);
            Status.Failure failure = await ExpectMsgAsync<Status.Failure>();
            Assert.That(failure.Cause, Is.InstanceOf<NotSupportedException>());
            Assert.That(h.Model.Snapshot.DirtyLog, Is.Null);
        }
    }

    [Test]
    public async Task The_log_is_sent_again_in_the_replay_after_a_reconnect()
    {
        var backends = new BackendFactory();
        using var rig = new TestRing();
        (ConnectionHarness first, ScriptedBackend backend) = await StartWithQueueAsync(backends, rig, LoggingFeatures);
        DirtyLoggingStarted started;
        using (backend)
        {
            first.Connection.Tell(StartDirtyLogging.Instance, TestActor);
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_LOG_BASE, ack: null);
            await backend.ReplyU64Async(VhostUserRequest.SET_LOG_BASE, 0);
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_FEATURES);
            await backend.ExpectAndDropAsync(VhostUserRequest.SET_VRING_ADDR);
            started = await ExpectMsgAsync<DirtyLoggingStarted>();
        }

        // The back-end hung up; the next connection gets the same model, as the supervisor hands it on.
        await first.Failure.Task.WaitAsync(TimeSpan.FromSeconds(10));
        ConnectionHarness second = Start(backends, first.Model);
        using ScriptedBackend next = await backends.NextAsync();
        await next.ServeHandshakeAsync(LoggingFeatures, Offered);
        using (VhostUserMessage m = await next.ExpectAsync(VhostUserRequest.SET_FEATURES))
        {
            Assert.That(VhostUserCodec.ReadU64(m.Payload.Span) & VhostUserVirtioFeatures.LOG_ALL, Is.Not.Zero, "still logging");
        }

        await next.ExpectAndDropAsync(VhostUserRequest.SET_MEM_TABLE);
        using (VhostUserMessage m = await next.ExpectAsync(VhostUserRequest.SET_LOG_BASE, ack: null))
        {
            using SafeFileDescriptor fd = m.TakeFd(0);
            using DirtyPageLog view = DirtyPageLog.Map(fd, VhostUserLog.Read(m.Payload.Span).MmapSize, 0);
            view.MarkDirty(0x8000, 1);
            await next.ReplyU64Async(VhostUserRequest.SET_LOG_BASE, 0);
        }

        await next.ExpectAndDropAsync(VhostUserRequest.SET_VRING_NUM);
        using (VhostUserMessage m = await next.ExpectAsync(VhostUserRequest.SET_VRING_ADDR))
        {
            Assert.That(VhostUserVringAddr.Read(m.Payload.Span).Flags, Is.EqualTo(VhostUserVringAddr.VHOST_VRING_F_LOG));
        }

        foreach (VhostUserRequest r in new[] { VhostUserRequest.SET_VRING_BASE, VhostUserRequest.SET_VRING_CALL, VhostUserRequest.SET_VRING_KICK, VhostUserRequest.SET_VRING_ENABLE })
        {
            await next.ExpectAndDropAsync(r);
        }

        await second.Parent.ExpectMsgAsync<ConnectionReady>();
        var bitmap = new ulong[DirtyPageBitmap.WordsFor(rig.Memory)];
        Assert.That(started.Log.Harvest(bitmap), Is.EqualTo(1), "the new back-end marks the same log the host harvests");
        Assert.That(DirtyPageBitmap.Pages(bitmap), Is.EqualTo(new ulong[] { 0x8000 }));
    }

    #region Infrastructure

    private static async Task HandshakeAsync(VhostUserFrontendConnection frontend, ScriptedBackend backend, ulong features)
    {
        Task<VhostUserBackendInfo> handshake = frontend.HandshakeAsync();
        await backend.ServeHandshakeAsync(features, Offered);
        await handshake;
    }

    private ConnectionHarness Start(BackendFactory backends, VhostUserDeviceModel? model = null) =>
        ConnectionHarness.Start(CreateTestProbe(), _loop, backends.Options(), model);

    private async Task<(ConnectionHarness, ScriptedBackend)> StartWithQueueAsync(BackendFactory backends, TestRing rig, ulong features)
    {
        ConnectionHarness h = Start(backends);
        ScriptedBackend backend = await backends.NextAsync();
        await backend.ServeHandshakeAsync(features, Offered);
        await h.Parent.ExpectMsgAsync<ConnectionReady>();
        h.Connection.Tell(new StartQueue(0, rig.Resources, ScriptedBackend.DefaultFeatures), TestActor);
        foreach (VhostUserRequest r in ScriptedBackend.RingStart)
        {
            await backend.ExpectAndDropAsync(r);
        }

        await ExpectMsgAsync<QueueStarted>();
        return (h, backend);
    }

    #endregion
}
