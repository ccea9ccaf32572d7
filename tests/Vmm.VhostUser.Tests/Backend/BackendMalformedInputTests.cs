using Vmm.TestKit;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Vmm.Core.Events;
using Vmm.Core.Posix;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Backend;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;
using static Vmm.VhostUser.Tests.Backend.ScriptedFrontend;

namespace Vmm.VhostUser.Tests.Backend;

/// <summary>
/// Malformed, out-of-order and hostile messages from a front-end. Each case must end in a NACK
/// (the connection kept and still answering), a clean disconnect, or service as usual; the server
/// must then serve the next, well-behaved front-end on a fresh connection, and every descriptor
/// and thread the case made the back-end open must be gone again.
/// </summary>
[TestFixture]
[Category("Backend")]
public sealed partial class BackendMalformedInputTests
{
    private const ulong Base = VirtioFeatures.VERSION_1 | VhostUserVirtioFeatures.PROTOCOL_FEATURES;

    public enum Outcome
    {
        /// <summary>A REPLY_ACK with a non-zero status; the connection stays up.</summary>
        Nack,

        /// <summary>The back-end closes the connection.</summary>
        Disconnect,

        /// <summary>No reply is due; the connection stays up (checked with a GET_FEATURES after it).</summary>
        Ignored,

        /// <summary>A GET_CONFIG reply with no payload: the spec's error answer.</summary>
        EmptyConfigReply,

        /// <summary>The case checked the back-end's answers itself; the connection stays up.</summary>
        Served,
    }

    /// <summary>One misbehaviour: what the front-end does, what must follow, the back-end's options and how the front-end's memory is backed.</summary>
    public sealed record Case(
        string Name, Outcome Expected, Func<ScriptedFrontend, Task> Act,
        VhostUserBackendOptions? Options = null, FrontendMemory Memory = FrontendMemory.Sealed)
    {
        public override string ToString() => Name;
    }

    private static readonly Case[] s_cases =
    [
        // Header and size violations: the codec rejects them before reading a payload.
        new("version 0", Outcome.Disconnect, f => Raw(f, 1, 0x0, 0)),
        new("version 2", Outcome.Disconnect, f => Raw(f, 1, 0x2, 0)),
        new("version 3", Outcome.Disconnect, f => Raw(f, 1, 0x3, 0)),
        new("reply bit on a request", Outcome.Disconnect, f => Raw(f, 1, 0x5, 0)),
        new("reserved flag bits", Outcome.Disconnect, f => Raw(f, 1, 0x101, 0)),
        new("size over the maximum", Outcome.Disconnect, f => Raw(f, 2, 0x1, 0x2000)),
        new("size 0xFFFFFFFF", Outcome.Disconnect, f => Raw(f, 2, 0x1, 0xFFFF_FFFF)),
        new("GET_FEATURES with a payload", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.GET_FEATURES, new byte[8])),
        new("SET_FEATURES with 4 bytes", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_FEATURES, new byte[4])),
        new("SET_VRING_NUM with 4 bytes", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_VRING_NUM, new byte[4])),
        new("SET_VRING_NUM with 12 bytes", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_VRING_NUM, new byte[12])),
        new("SET_VRING_ADDR with 32 bytes", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_VRING_ADDR, new byte[32])),
        new("SET_MEM_TABLE with 0 regions", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_MEM_TABLE, new byte[8])),
        new("SET_MEM_TABLE with 9 regions", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_MEM_TABLE, MemTable(9))),
        new("SET_MEM_TABLE with a torn region", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_MEM_TABLE, new byte[8 + 31])),
        new("truncated header", Outcome.Disconnect, f => Bytes(f, new byte[6])),
        new("truncated payload", Outcome.Disconnect, f => Bytes(f, [.. Header(2, 0x1, 8), 1, 2, 3, 4])),

        // File descriptors that do not match the request.
        new("SET_VRING_KICK without its fd", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_VRING_KICK, U64(0))),
        new("SET_VRING_KICK with two fds", Outcome.Disconnect, f => WithEventFds(f, 2, fds => f.SendAsync(VhostUserRequest.SET_VRING_KICK, U64(0), fds))),
        new("SET_VRING_CALL with NOFD and an fd", Outcome.Disconnect, f => WithEventFds(f, 1, fds => f.SendAsync(VhostUserRequest.SET_VRING_CALL, U64(0x100), fds))),
        new("SET_VRING_CALL with reserved bits", Outcome.Disconnect, f => WithEventFds(f, 1, fds => f.SendAsync(VhostUserRequest.SET_VRING_CALL, U64(0x1000), fds))),
        new("SET_MEM_TABLE with fewer fds than regions", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_MEM_TABLE, f.MemoryTablePayload(), [])),
        new("GET_FEATURES with an fd", Outcome.Disconnect, f => WithEventFds(f, 1, fds => f.SendAsync(VhostUserRequest.GET_FEATURES, default, fds))),
        new("SET_PROTOCOL_FEATURES with a bit never offered", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_PROTOCOL_FEATURES, U64(1UL << 18))),
        new("SET_PROTOCOL_FEATURES with bit 21", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_PROTOCOL_FEATURES, U64(1UL << 21))),
        new("GET_VRING_BASE of a ring that does not exist", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.GET_VRING_BASE, State(7, 0))),

        // Well-formed requests the back-end refuses: NACKed, the connection kept.
        new("unknown request 99", Outcome.Nack, f => f.SendAsync((VhostUserRequest)99, default, null, needReply: true)),
        new("unknown request 200 without reply", Outcome.Ignored, f => f.SendAsync((VhostUserRequest)200)),
        // The bare u64 form carries no log to map; SET_LOG_BASE has no failure code, so the connection ends.
        new("SET_LOG_BASE without a log fd", Outcome.Disconnect, f => f.SendAsync(VhostUserRequest.SET_LOG_BASE, U64(0), null, needReply: true)),
        new("unimplemented IOTLB_MSG", Outcome.Nack, f => f.SendAsync(VhostUserRequest.IOTLB_MSG, new byte[VhostUserIotlbMsg.Size], null, needReply: true)),
        new("SET_FEATURES with a bit not offered", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_FEATURES, U64(Base | (1UL << 63)), null, true))),
        new("SET_VRING_NUM of ring 5", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_NUM, State(5, 64), null, true))),
        new("SET_VRING_NUM of size 0", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_NUM, State(0, 0), null, true))),
        new("SET_VRING_NUM above the maximum", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_NUM, State(0, 65535), null, true))),
        new("SET_VRING_ADDR of ring 3", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_ADDR, Addr(3, 0, 0x1000, 0x2000, 0x3000), null, true))),
        new("SET_VRING_ADDR with a reserved flag bit", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_ADDR, Addr(0, 2, 0x1000, 0x2000, 0x3000), null, true))),
        new("SET_VRING_ADDR with a misaligned descriptor table", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_ADDR, Addr(0, 0, 0x1008, 0x2000, 0x3000), null, true))),
        new("SET_VRING_ADDR with a misaligned used ring", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_ADDR, Addr(0, 0, 0x1000, 0x2002, 0x3000), null, true))),
        new("SET_VRING_BASE of ring 9", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_BASE, State(9, 0), null, true))),
        new("SET_VRING_BASE above 16 bits on a split ring", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_BASE, State(0, 0x10000), null, true))),
        new("SET_VRING_ENABLE with 2", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_ENABLE, State(0, 2), null, true))),
        new("SET_VRING_ENABLE of ring 9", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_VRING_ENABLE, State(9, 1), null, true))),
        new("SET_VRING_KICK of ring 8", Outcome.Nack, f => Handshaken(f, () => WithEventFds(f, 1, fds => f.SendAsync(VhostUserRequest.SET_VRING_KICK, U64(8), fds, true)))),
        new("ADD_MEM_REG overlapping a region", Outcome.Nack, f => Handshaken(f, async () => { await f.AddMemRegAsync(); await AddRegion(f, 0x1000, 0x1000, 0x7000_0000, 0); })),
        new("ADD_MEM_REG of size 0", Outcome.Nack, f => Handshaken(f, () => AddRegion(f, 0x4000_0000, 0, 0x7000_0000, 0))),
        new("ADD_MEM_REG beyond the end of its fd", Outcome.Nack, f => Handshaken(f, () => AddRegion(f, 0x4000_0000, 0x1000, 0x7000_0000, MemorySize))),
        new("ADD_MEM_REG wrapping the address space", Outcome.Nack, f => Handshaken(f, () => AddRegion(f, ulong.MaxValue - 0xfff, 0x2000, 0x7000_0000, 0))),
        new("REM_MEM_REG of a region never added", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.REM_MEM_REG, Region(0x4000_0000, 0x1000, 0x7000_0000, 0), null, true))),
        new("ADD_MEM_REG without CONFIGURE_MEM_SLOTS", Outcome.Nack, f => Handshaken(f, () => AddRegion(f, 0x4000_0000, 0x1000, 0x7000_0000, 0), VhostUserProtocolFeatures.REPLY_ACK)),
        new("SET_MEM_TABLE region beyond its fd", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_MEM_TABLE, OneRegionTable(0, MemorySize * 2, 0x7000_0000, 0), [f.Memory.Regions[0].Fd], true))),
        new("SET_CONFIG outside the config space", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_CONFIG, Config(250, 6), null, true))),
        new("SET_CONFIG without CONFIG negotiated", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_CONFIG, Config(32, 1), null, true), VhostUserProtocolFeatures.REPLY_ACK)),
        new("GET_CONFIG outside the config space", Outcome.EmptyConfigReply, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.GET_CONFIG, Config(40, 100)))),
        new("GET_CONFIG without CONFIG negotiated", Outcome.EmptyConfigReply, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.GET_CONFIG, Config(0, 8)), VhostUserProtocolFeatures.REPLY_ACK)),
        new("SET_STATUS above a byte", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.SET_STATUS, U64(0x1ff), null, true))),
        new("RESET_DEVICE without negotiation", Outcome.Nack, f => Handshaken(f, () => f.SendAsync(VhostUserRequest.RESET_DEVICE, default, null, true), VhostUserProtocolFeatures.REPLY_ACK)),
        new("SET_INFLIGHT_FD for no queues", Outcome.Nack, f => Handshaken(f, () => WithMemFd(f, fd => f.SendAsync(VhostUserRequest.SET_INFLIGHT_FD, Inflight(4096, 0, 0, 64), [fd], true)))),
        new("SET_INFLIGHT_FD too small", Outcome.Nack, f => Handshaken(f, () => WithMemFd(f, fd => f.SendAsync(VhostUserRequest.SET_INFLIGHT_FD, Inflight(64, 0, 1, 256), [fd], true)))),
        new("ring addresses outside the memory table", Outcome.Nack, f => Handshaken(f, async () =>
        {
            Assert.That(await f.SetMemTableAsync(), Is.Zero);
            Assert.That(await f.AckAsync(VhostUserRequest.SET_VRING_NUM, State(0, 64)), Is.Zero);
            Assert.That(await f.AckAsync(VhostUserRequest.SET_FEATURES, U64(Base)), Is.Zero);
            Assert.That(await f.AckAsync(VhostUserRequest.SET_VRING_ADDR, Addr(0, 0, 0x9000_0000, 0x9000_2000, 0x9000_4000)), Is.Zero);
            using var kick = new EventFd();
            Assert.That(await f.AckAsync(VhostUserRequest.SET_VRING_KICK, U64(0), [kick.Handle]), Is.Zero);

            // The ring can only start now, and cannot: its addresses are not in the table.
            await f.SendAsync(VhostUserRequest.SET_VRING_ENABLE, State(0, 1), null, needReply: true);
        })),
        new("SET_VRING_BASE on a running ring", Outcome.Nack, async f =>
        {
            await f.StartDeviceAsync(64, Base);
            await f.SendAsync(VhostUserRequest.SET_VRING_BASE, State(0, 3), null, needReply: true);
        }),
    ];

    public static IEnumerable<TestCaseData> Cases() => s_cases.Concat(s_hostileCases)
        .Select(c => new TestCaseData(c).SetName($"Malformed_input_{TestName(c.Name)}_gets_{c.Expected}_and_the_next_frontend_is_served"));

    [Test]
    public void The_list_keeps_at_least_forty_cases() => Assert.That(s_cases, Has.Length.GreaterThanOrEqualTo(40));

    [Test]
    public void The_hostile_list_keeps_at_least_thirty_cases() => Assert.That(s_hostileCases, Has.Length.GreaterThanOrEqualTo(30));

    private static string TestName(string name) => new(name.Select(c => char.IsAsciiLetterOrDigit(c) ? c : '_').ToArray());

    [OneTimeSetUp]
    public async Task WarmUp()
    {
        // The runtime opens its socket engine's descriptors on first use, and the SIGBUS guard
        // its eventfd (for the life of the process): open them before counting.
        Assert.That(SigbusGuard.IsAvailable, Is.True, SigbusGuard.UnavailableReason);
        await using var backend = new BackendFixture();
        await backend.AssertServesWellBehavedFrontendAsync();
    }

    [TestCaseSource(nameof(Cases))]
    public async Task Malformed_input(Case testCase)
    {
        int fdsBefore = OpenDescriptors.Count();
        string[] before = OpenDescriptors.Describe();
        int threadsBefore = OpenThreads.Count();
        var backend = new BackendFixture(options: testCase.Options);

        using (ScriptedFrontend frontend = await backend.ConnectAsync(testCase.Memory))
        {
            await testCase.Act(frontend);
            switch (testCase.Expected)
            {
                case Outcome.Nack:
                    using (VhostUserMessage reply = await frontend.ReceiveAsync())
                    {
                        Assert.That(reply.Header.Flags, Is.EqualTo(VhostUserCodec.ReplyFlags));
                        Assert.That(VhostUserCodec.ReadU64(reply.Payload.Span), Is.Not.Zero, "a failure status");
                    }

                    Assert.That(await frontend.GetU64Async(VhostUserRequest.GET_FEATURES), Is.Not.Zero, "the connection is kept");
                    break;
                case Outcome.Ignored:
                case Outcome.Served:
                    Assert.That(await frontend.GetU64Async(VhostUserRequest.GET_FEATURES), Is.Not.Zero, "the connection is kept");
                    break;
                case Outcome.EmptyConfigReply:
                    using (VhostUserMessage reply = await frontend.ReceiveAsync())
                    {
                        Assert.That(reply.Header.Request, Is.EqualTo((uint)VhostUserRequest.GET_CONFIG));
                        Assert.That(reply.Header.PayloadSize, Is.Zero);
                    }

                    break;
                case Outcome.Disconnect:
                    await frontend.ExpectDisconnectAsync();
                    break;
            }
        }

        await backend.AssertServesWellBehavedFrontendAsync();
        await backend.DisposeAsync();

        // Sessions end asynchronously after their front-end goes; give them a moment.
        DateTime deadline = DateTime.UtcNow.AddSeconds(10);
        while ((OpenDescriptors.Count() > fdsBefore || OpenThreads.Count() > threadsBefore) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }

        Assert.That(OpenDescriptors.Count(), Is.LessThanOrEqualTo(fdsBefore), () => "every descriptor received or created is closed; new: " + string.Join(", ", OpenDescriptors.Describe().Except(before)));
        Assert.That(OpenThreads.Count(), Is.LessThanOrEqualTo(threadsBefore), () => "every ring worker and transfer thread ended; left: " + string.Join(", ", OpenThreads.Describe()));
    }

    private static byte[] Header(uint request, uint flags, uint size)
    {
        byte[] b = new byte[VhostUserHeader.Size];
        new VhostUserHeader(request, flags, size).Write(b);
        return b;
    }

    private static Task Raw(ScriptedFrontend f, uint request, uint flags, uint size) => Bytes(f, Header(request, flags, size));

    /// <summary>Writes bytes straight to the socket and half-closes it, so a truncated message stays truncated.</summary>
    private static async Task Bytes(ScriptedFrontend f, byte[] bytes)
    {
        Socket socket = SocketOf(f.Channel);
        await socket.SendAsync(bytes);
        if (bytes.Length < VhostUserHeader.Size || (bytes.Length > VhostUserHeader.Size && bytes.Length < VhostUserHeader.Size + VhostUserHeader.Read(bytes).PayloadSize))
        {
            socket.Shutdown(SocketShutdown.Send);
        }
    }

    private static Socket SocketOf(VhostUserChannel channel) => channel.Socket;

    private static async Task WithEventFds(ScriptedFrontend f, int count, Func<IReadOnlyList<SafeHandle>, Task> send)
    {
        EventFd[] fds = Enumerable.Range(0, count).Select(_ => new EventFd()).ToArray();
        try
        {
            await send(fds.Select(e => (SafeHandle)e.Handle).ToArray());
        }
        finally
        {
            foreach (EventFd e in fds)
            {
                e.Dispose();
            }
        }
    }

    private static async Task WithMemFd(ScriptedFrontend f, Func<SafeHandle, Task> send)
    {
        using SafeFileDescriptor fd = MemFd.Create("test-inflight", 4096);
        await send(fd);
    }

    private static async Task Handshaken(ScriptedFrontend f, Func<Task> then, VhostUserProtocolFeatures? protocol = null)
    {
        await f.HandshakeAsync(protocol);
        await then();
    }

    private static byte[] MemTable(int regions)
    {
        byte[] b = new byte[8 + (32 * regions)];
        BitConverter.TryWriteBytes(b.AsSpan(0, 4), (uint)regions);
        return b;
    }

    private static byte[] OneRegionTable(ulong gpa, ulong size, ulong uva, ulong offset)
    {
        byte[] b = new byte[VhostUserMemoryTable.PayloadSize(1)];
        VhostUserMemoryTable.Write(b, [new VhostUserMemoryRegion(gpa, size, uva, offset)]);
        return b;
    }

    private static byte[] Region(ulong gpa, ulong size, ulong uva, ulong offset)
    {
        byte[] b = new byte[VhostUserSingleMemoryRegion.Size];
        new VhostUserSingleMemoryRegion(new VhostUserMemoryRegion(gpa, size, uva, offset)).Write(b);
        return b;
    }

    private static Task AddRegion(ScriptedFrontend f, ulong gpa, ulong size, ulong uva, ulong offset) =>
        f.SendAsync(VhostUserRequest.ADD_MEM_REG, Region(gpa, size, uva, offset), [f.Memory.Regions[0].Fd], needReply: true);

    private static byte[] Addr(uint index, uint flags, ulong desc, ulong used, ulong avail)
    {
        byte[] b = new byte[VhostUserVringAddr.Size];
        new VhostUserVringAddr(index, flags, desc, used, avail, 0).Write(b);
        return b;
    }

    private static byte[] Config(uint offset, uint size)
    {
        byte[] b = new byte[VhostUserConfig.HeaderSize + size];
        new VhostUserConfig(offset, size, VhostUserConfigFlags.FRONTEND).Write(b);
        return b;
    }

    private static byte[] Inflight(ulong size, ulong offset, ushort queues, ushort queueSize)
    {
        byte[] b = new byte[VhostUserInflight.Size];
        new VhostUserInflight(size, offset, queues, queueSize).Write(b);
        return b;
    }
}
