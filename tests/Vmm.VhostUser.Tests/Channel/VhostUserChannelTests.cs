using Vmm.TestKit;
using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Runtime.Versioning;
using NUnit.Framework;
using Vmm.Core.Posix;
using Vmm.Core.Posix.Sockets;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Channel;

[TestFixture]
[SupportedOSPlatform("linux")]
public sealed class VhostUserChannelTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private const uint Version1 = VhostUserHeaderFlags.Version;

    private string _directory = null!;

    [SetUp]
    public void SetUp() => _directory = Directory.CreateTempSubdirectory("vmm-").FullName;

    [TearDown]
    public async Task TearDown() => Directory.Delete(_directory, recursive: true);

    [Test]
    public async Task Channel_must_round_trip_a_message_over_a_socketpair()
    {
        (VhostUserChannel a, VhostUserChannel b) = VhostUserChannel.CreatePair();
        using (a)
        using (b)
        {
            await AssertRoundTripAsync(a, b);
            await AssertRoundTripAsync(b, a);
        }
    }

    [Test]
    public async Task Channel_must_round_trip_a_message_over_a_path_socket()
    {
        string path = Path.Combine(_directory, "vu.sock");
        using var listener = VhostUserListener.Bind(path);
        Task<VhostUserChannel> accept = listener.AcceptAsync().AsTask();
        using VhostUserChannel client = await VhostUserChannel.ConnectAsync(path).WaitAsync(Timeout);
        using VhostUserChannel server = await accept.WaitAsync(Timeout);

        await AssertRoundTripAsync(client, server);
        await AssertRoundTripAsync(server, client);
    }

    [Test]
    public async Task Connect_must_say_whether_the_path_is_missing_or_refused()
    {
        string missing = Path.Combine(_directory, "missing.sock");
        var notFound = await Assert.ThrowsAsync<FileNotFoundException>(() => VhostUserChannel.ConnectAsync(missing).WaitAsync(Timeout));
        Assert.That(notFound!.Message, Does.Contain("does not exist"));

        string stale = Path.Combine(_directory, "stale.sock");
        int fd = Mono.Unix.Native.Syscall.socket(
            Mono.Unix.Native.UnixAddressFamily.AF_UNIX, Mono.Unix.Native.UnixSocketType.SOCK_STREAM, 0, 0);
        Assert.That(Mono.Unix.Native.Syscall.bind(fd, new Mono.Unix.Native.SockaddrUn(stale)), Is.Zero);
        Mono.Unix.Native.Syscall.close(fd);
        var refused = await Assert.ThrowsAsync<IOException>(() => VhostUserChannel.ConnectAsync(stale).WaitAsync(Timeout));
        Assert.That(refused!.Message, Does.Contain("refused"));
    }

    [Test]
    public async Task Channel_must_pass_a_memfd_that_both_sides_map()
    {
        const long size = 2 * 1024 * 1024;
        (VhostUserChannel a, VhostUserChannel b) = VhostUserChannel.CreatePair();
        using (a)
        using (b)
        using (SafeFileDescriptor memfd = TestMemfd.Create("guest-ram", size))
        {
            IntPtr senderView = TestMemfd.Map(memfd, size);
            try
            {
                var payload = new byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(payload, (ulong)size);
                await a.SendAsync(new VhostUserHeader(5, Version1, 8), payload, [memfd]).AsTask().WaitAsync(Timeout);

                using VhostUserMessage message = await b.ReceiveAsync().AsTask().WaitAsync(Timeout);
                Assert.That(message.Fds, Has.Count.EqualTo(1));
                Assert.That(message.ReadPayload<ulong>(), Is.EqualTo((ulong)size));

                using SafeFileDescriptor received = message.TakeFd(0);
                IntPtr receiverView = TestMemfd.Map(received, size);
                try
                {
                    Marshal.WriteInt64(receiverView, 4096, 0x1122334455667788);
                    Marshal.WriteInt64(senderView, 8192, 0x0A0B0C0D);

                    Assert.That(Marshal.ReadInt64(senderView, 4096), Is.EqualTo(0x1122334455667788));
                    Assert.That(Marshal.ReadInt64(receiverView, 8192), Is.EqualTo(0x0A0B0C0D));
                }
                finally
                {
                    TestMemfd.Unmap(receiverView, size);
                }

                // Taken: the message's Dispose must leave it open.
                message.Dispose();
                Assert.That(received.IsClosed, Is.False);
            }
            finally
            {
                TestMemfd.Unmap(senderView, size);
            }
        }
    }

    [Test]
    public async Task Channel_must_not_leak_fds_over_ten_thousand_messages()
    {
        (VhostUserChannel a, VhostUserChannel b) = VhostUserChannel.CreatePair();
        using (a)
        using (b)
        using (SafeFileDescriptor first = TestMemfd.Create("one", 4096))
        using (SafeFileDescriptor second = TestMemfd.Create("two", 4096))
        {
            SafeHandle[] fds = [first, second];
            var header = new VhostUserHeader(5, Version1, 8);
            var payload = new byte[8];

            // Warm up: the runtime opens its own descriptors (epoll) on first async use.
            await a.SendAsync(header, payload, fds).AsTask().WaitAsync(Timeout);
            (await b.ReceiveAsync().AsTask().WaitAsync(Timeout)).Dispose();
            int before = CountFds();

            Task sender = Task.Run(async () =>
            {
                for (int i = 0; i < 10_000; i++)
                {
                    await a.SendAsync(header, payload, fds);
                }
            });
            for (int i = 0; i < 10_000; i++)
            {
                using VhostUserMessage message = await b.ReceiveAsync().AsTask().WaitAsync(Timeout);
                Assert.That(message.Fds, Has.Count.EqualTo(2));
            }

            await sender.WaitAsync(Timeout);
            Assert.That(CountFds(), Is.EqualTo(before));
        }
    }

    [Test]
    public async Task Channel_must_reject_and_close_more_fds_than_a_message_may_carry()
    {
        (Socket raw, Socket peer) = UnixSocketPair.Create();
        using (raw)
        using (VhostUserChannel channel = VhostUserChannel.FromSocket(peer))
        using (SafeFileDescriptor memfd = TestMemfd.Create("many", 4096))
        {
            // Warm up the runtime's async machinery before counting.
            await SendRawAsync(raw, Header(1, Version1, 0));
            (await channel.ReceiveAsync().AsTask().WaitAsync(Timeout)).Dispose();
            int before = CountFds();

            SafeHandle[] twelve = Enumerable.Repeat<SafeHandle>(memfd, 12).ToArray();
            Assert.That((int)FdPassing.TrySend(raw, Header(5, Version1, 0), twelve), Is.EqualTo(VhostUserHeader.Size));

            var e = await Assert.ThrowsAsync<VhostUserProtocolException>(() => channel.ReceiveAsync().AsTask().WaitAsync(Timeout));
            Assert.That(e!.Message, Does.Contain("fds"));
            Assert.That(CountFds(), Is.EqualTo(before));
        }
    }

    [Test]
    public async Task Channel_must_close_fds_received_with_a_malformed_header()
    {
        (Socket raw, Socket peer) = UnixSocketPair.Create();
        using (raw)
        using (VhostUserChannel channel = VhostUserChannel.FromSocket(peer))
        using (SafeFileDescriptor memfd = TestMemfd.Create("bad", 4096))
        {
            await SendRawAsync(raw, Header(1, Version1, 0));
            (await channel.ReceiveAsync().AsTask().WaitAsync(Timeout)).Dispose();
            int before = CountFds();

            Assert.That((int)FdPassing.TrySend(raw, Header(5, 0x2, 0), [memfd, memfd]), Is.EqualTo(VhostUserHeader.Size));

            var e = await Assert.ThrowsAsync<VhostUserProtocolException>(() => channel.ReceiveAsync().AsTask().WaitAsync(Timeout));
            Assert.That(e!.Message, Does.Contain("version"));
            Assert.That(CountFds(), Is.EqualTo(before));
        }
    }

    [Test]
    public async Task Channel_must_accept_fds_arriving_with_a_payload_chunk_up_to_the_total_limit()
    {
        (Socket raw, Socket peer) = UnixSocketPair.Create();
        using (raw)
        using (VhostUserChannel channel = VhostUserChannel.FromSocket(peer))
        using (SafeFileDescriptor memfd = TestMemfd.Create("late", 4096))
        {
            // Header with 5 fds, payload with 3 more: 8 in total, accepted.
            Task<VhostUserMessage> receive = channel.ReceiveAsync().AsTask();
            Assert.That((int)FdPassing.TrySend(raw, Header(5, Version1, 8), Enumerable.Repeat<SafeHandle>(memfd, 5).ToArray()), Is.EqualTo(12));
            await Task.Delay(20);
            Assert.That((int)FdPassing.TrySend(raw, new byte[8], Enumerable.Repeat<SafeHandle>(memfd, 3).ToArray()), Is.EqualTo(8));
            using (VhostUserMessage message = await receive.WaitAsync(Timeout))
            {
                Assert.That(message.Fds, Has.Count.EqualTo(VhostUserChannel.MaxFds));
            }

            // Header with 5 fds, payload with 4 more: 9, rejected and all closed.
            int before = CountFds();
            receive = channel.ReceiveAsync().AsTask();
            Assert.That((int)FdPassing.TrySend(raw, Header(5, Version1, 8), Enumerable.Repeat<SafeHandle>(memfd, 5).ToArray()), Is.EqualTo(12));
            await Task.Delay(20);
            Assert.That((int)FdPassing.TrySend(raw, new byte[8], Enumerable.Repeat<SafeHandle>(memfd, 4).ToArray()), Is.EqualTo(8));
            await Assert.ThrowsAsync<VhostUserProtocolException>(() => receive.WaitAsync(Timeout));
            Assert.That(CountFds(), Is.EqualTo(before));
        }
    }

    [TestCase(0x0u, "version")]
    [TestCase(0x3u, "version")]
    [TestCase(0x11u, "reserved")]
    [TestCase(0x80000001u, "reserved")]
    public async Task Channel_must_reject_bad_header_flags(uint flags, string expected)
    {
        (Socket raw, Socket peer) = UnixSocketPair.Create();
        using (raw)
        using (VhostUserChannel channel = VhostUserChannel.FromSocket(peer))
        {
            raw.Send(Header(1, flags, 0));
            var e = await Assert.ThrowsAsync<VhostUserProtocolException>(() => channel.ReceiveAsync().AsTask().WaitAsync(Timeout));
            Assert.That(e!.Message, Does.Contain(expected));
        }
    }

    [Test]
    public async Task Channel_must_reject_an_oversized_payload_before_reading_or_allocating_it()
    {
        (Socket raw, Socket peer) = UnixSocketPair.Create();
        using (raw)
        using (VhostUserChannel channel = VhostUserChannel.FromSocket(peer))
        {
            raw.Send([.. Header(2, Version1, 0xFFFFFFFF), .. new byte[16]]);

            long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
            var e = await Assert.ThrowsAsync<VhostUserProtocolException>(() => channel.ReceiveAsync().AsTask().WaitAsync(Timeout));
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;

            Assert.That(e!.Message, Does.Contain("exceeds"));
            Assert.That(peer.Available, Is.EqualTo(16), "no payload byte consumed");
            Assert.That(allocated, Is.LessThan(1024 * 1024));
        }
    }

    [Test]
    public async Task Channel_must_run_the_owners_header_validator_before_the_payload()
    {
        var options = new VhostUserChannelOptions
        {
            HeaderValidator = h =>
            {
                if (h.Request == 99)
                {
                    throw new VhostUserProtocolException($"unknown request {h.Request}");
                }
            },
        };
        (Socket raw, Socket peer) = UnixSocketPair.Create();
        using (raw)
        using (VhostUserChannel channel = VhostUserChannel.FromSocket(peer, options))
        {
            raw.Send([.. Header(99, Version1, 8), .. new byte[8]]);

            var e = await Assert.ThrowsAsync<VhostUserProtocolException>(() => channel.ReceiveAsync().AsTask().WaitAsync(Timeout));
            Assert.That(e!.Message, Does.Contain("unknown request 99"));
            Assert.That(peer.Available, Is.EqualTo(8));
        }
    }

    [Test]
    public async Task Channel_must_report_a_peer_closing_between_messages()
    {
        (VhostUserChannel a, VhostUserChannel b) = VhostUserChannel.CreatePair();
        using (b)
        {
            a.Dispose();
            var e = await Assert.ThrowsAsync<VhostUserConnectionLostException>(() => b.ReceiveAsync().AsTask().WaitAsync(Timeout));
            Assert.That(e!.Message, Does.Contain("between messages"));
        }
    }

    [Test]
    public async Task Channel_must_report_a_peer_closing_mid_header()
    {
        (Socket raw, Socket peer) = UnixSocketPair.Create();
        using (VhostUserChannel channel = VhostUserChannel.FromSocket(peer))
        {
            Task<VhostUserMessage> receive = channel.ReceiveAsync().AsTask();
            await SendRawAsync(raw, Header(1, Version1, 0).AsMemory(0, 5));
            raw.Dispose();

            var e = await Assert.ThrowsAsync<VhostUserConnectionLostException>(() => receive.WaitAsync(Timeout));
            Assert.That(e!.Message, Does.Contain("middle of a message").And.Contain("5 of 12 header bytes"));
        }
    }

    [Test]
    public async Task Channel_must_report_a_peer_closing_mid_payload()
    {
        (Socket raw, Socket peer) = UnixSocketPair.Create();
        using (VhostUserChannel channel = VhostUserChannel.FromSocket(peer))
        {
            Task<VhostUserMessage> receive = channel.ReceiveAsync().AsTask();
            await SendRawAsync(raw, (byte[])[.. Header(1, Version1, 16), .. new byte[4]]);
            raw.Dispose();

            var e = await Assert.ThrowsAsync<VhostUserConnectionLostException>(() => receive.WaitAsync(Timeout));
            Assert.That(e!.Message, Does.Contain("middle of a message").And.Contain("4 of 16 payload bytes"));
        }
    }

    [Test]
    public async Task Channel_must_report_a_lost_peer_on_send()
    {
        (VhostUserChannel a, VhostUserChannel b) = VhostUserChannel.CreatePair();
        using (a)
        using (SafeFileDescriptor memfd = TestMemfd.Create("gone", 4096))
        {
            b.Dispose();
            await Assert.ThrowsAsync<VhostUserConnectionLostException>(
                () => a.SendAsync(new VhostUserHeader(1, Version1, 0), ReadOnlyMemory<byte>.Empty).AsTask().WaitAsync(Timeout));
            await Assert.ThrowsAsync<VhostUserConnectionLostException>(
                () => a.SendAsync(new VhostUserHeader(1, Version1, 0), ReadOnlyMemory<byte>.Empty, [memfd]).AsTask().WaitAsync(Timeout));
        }
    }

    [Test]
    public async Task Channel_must_not_interleave_concurrent_senders()
    {
        const int senders = 8;
        const int messagesEach = 100;
        (VhostUserChannel a, VhostUserChannel b) = VhostUserChannel.CreatePair(new VhostUserChannelOptions { MaxPayloadSize = 256 * 1024 });
        using (a)
        using (b)
        using (SafeFileDescriptor memfd = TestMemfd.Create("concurrent", 4096))
        {
            // Payloads larger than the socket buffer force partial writes, and every other
            // message carries an fd (sendmsg for the first chunk, then plain sends): the mix is
            // where unserialized senders would interleave.
            Task[] sending = Enumerable.Range(0, senders).Select(id => Task.Run(async () =>
            {
                for (int i = 0; i < messagesEach; i++)
                {
                    int size = 1000 + ((id * 7919 + i * 104729) % 200_000);
                    byte[] payload = new byte[size];
                    Array.Fill(payload, (byte)id);
                    await a.SendAsync(new VhostUserHeader((uint)id, Version1, (uint)size), payload, i % 2 == 0 ? [memfd] : null);
                }
            })).ToArray();

            var counts = new int[senders];
            for (int m = 0; m < senders * messagesEach; m++)
            {
                using VhostUserMessage message = await b.ReceiveAsync().AsTask().WaitAsync(Timeout);
                int id = (int)message.Header.Request;
                Assert.That(id, Is.InRange(0, senders - 1));
                Assert.That(message.Payload.Span.IndexOfAnyExcept((byte)id), Is.EqualTo(-1), $"message {m} from sender {id} is mixed");
                Assert.That(message.Fds, Has.Count.LessThanOrEqualTo(1));
                counts[id]++;
            }

            await Task.WhenAll(sending).WaitAsync(Timeout);
            Assert.That(counts, Is.All.EqualTo(messagesEach));
        }
    }

    [Test]
    public async Task Dispose_must_wake_a_pending_receive()
    {
        (VhostUserChannel a, VhostUserChannel b) = VhostUserChannel.CreatePair();
        using (a)
        {
            Task<VhostUserMessage> receive = b.ReceiveAsync().AsTask();
            await Task.Delay(50);
            Assert.That(receive.IsCompleted, Is.False);

            b.Dispose();

            var e = await Assert.ThrowsAsync<VhostUserConnectionLostException>(() => receive.WaitAsync(Timeout));
            Assert.That(e!.Message, Does.Contain("disposed"));
        }
    }

    [Test]
    public async Task Cancellation_must_end_a_pending_receive_and_leave_the_channel_usable()
    {
        (VhostUserChannel a, VhostUserChannel b) = VhostUserChannel.CreatePair();
        using (a)
        using (b)
        {
            using var cts = new CancellationTokenSource();
            Task<VhostUserMessage> receive = b.ReceiveAsync(cts.Token).AsTask();
            await Task.Delay(50);
            await cts.CancelAsync();

            Assert.That(
                async () => await receive.WaitAsync(Timeout),
                Throws.InstanceOf<OperationCanceledException>());

            // Nothing of a message was consumed, so the next receive works.
            await AssertRoundTripAsync(a, b);
        }
    }

    [Test]
    public async Task Message_must_close_fds_not_taken_on_dispose()
    {
        (VhostUserChannel a, VhostUserChannel b) = VhostUserChannel.CreatePair();
        using (a)
        using (b)
        using (SafeFileDescriptor memfd = TestMemfd.Create("own", 4096))
        {
            await a.SendAsync(new VhostUserHeader(5, Version1, 0), ReadOnlyMemory<byte>.Empty, [memfd, memfd]).AsTask().WaitAsync(Timeout);
            VhostUserMessage message = await b.ReceiveAsync().AsTask().WaitAsync(Timeout);
            SafeFileDescriptor taken = message.TakeFd(1);

            Assert.That(() => message.TakeFd(1), Throws.InvalidOperationException);
            Assert.That(() => message.ReadPayload<int>(), Throws.TypeOf<VhostUserProtocolException>());
            message.Dispose();

            Assert.That(message.Fds[0].IsClosed, Is.True);
            Assert.That(taken.IsClosed, Is.False);
            taken.Dispose();
        }
    }

    private static async Task AssertRoundTripAsync(VhostUserChannel from, VhostUserChannel to)
    {
        byte[] payload = Enumerable.Range(0, 40).Select(i => (byte)i).ToArray();
        var header = new VhostUserHeader(9, Version1 | VhostUserHeaderFlags.NeedReply, (uint)payload.Length);

        await from.SendAsync(header, payload).AsTask().WaitAsync(Timeout);
        using VhostUserMessage message = await to.ReceiveAsync().AsTask().WaitAsync(Timeout);

        Assert.That(message.Header.Request, Is.EqualTo(9u));
        Assert.That(message.Header.Flags, Is.EqualTo(Version1 | VhostUserHeaderFlags.NeedReply));
        Assert.That(message.Payload.ToArray(), Is.EqualTo(payload));
        Assert.That(message.Fds, Is.Empty);
        Assert.That(message.ReadPayload<ulong>(32), Is.EqualTo(BinaryPrimitives.ReadUInt64LittleEndian(payload.AsSpan(32))));
    }

    private static byte[] Header(uint request, uint flags, uint size)
    {
        var bytes = new byte[VhostUserHeader.Size];
        new VhostUserHeader(request, flags, size).Write(bytes);
        return bytes;
    }

    private static async Task SendRawAsync(Socket socket, ReadOnlyMemory<byte> data) =>
        await socket.SendAsync(data, SocketFlags.None).AsTask().WaitAsync(Timeout);

    private static int CountFds() => OpenDescriptors.Count();
}
