using System.Runtime.InteropServices;
using Vmm.Core.Posix;
using Vmm.VhostUser.Tests.Channel;
using Vmm.Core.Events;
using Vmm.Core.Memory;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Driver.Blk;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Channel;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Backend;

/// <summary>
/// A front-end driven step by step by a test: it sends exactly the messages the test asks for,
/// so tests can replay what QEMU does, and what a broken front-end does, against the back-end.
/// It owns guest memory and a driver-side queue so it can also push real I/O through a ring.
/// </summary>
public sealed class ScriptedFrontend : IDisposable
{
    public const ulong MemorySize = 16 << 20;
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(10);
    private readonly List<IDisposable> _owned = [];

    private ScriptedFrontend(VhostUserChannel channel, FrontendMemory memory)
    {
        Channel = channel;
        Memory = memory switch
        {
            FrontendMemory.Sealed => GuestMemory.Create(MemorySize),
            FrontendMemory.TwoAdjacentRegions => GuestMemory.Create([new GuestMemoryRange(0, MemorySize / 2), new GuestMemoryRange(MemorySize / 2, MemorySize / 2)]),
            _ => PeerMemory(memory),
        };
        Allocator = new GuestMemoryAllocator(0x1000, MemorySize - 0x1000);
    }

    /// <summary>How the front-end's guest RAM is backed, which decides what the back-end can do with it.</summary>
    public enum FrontendMemory
    {
        /// <summary>A memfd sealed against shrinking and growing (what our VMM and QEMU's memory-backend-memfd make).</summary>
        Sealed,

        /// <summary>A memfd that allows sealing but is not sealed: the back-end seals it.</summary>
        Sealable,

        /// <summary>A memfd that can never be sealed, as a file on /dev/shm or hugetlbfs: the front-end can truncate it under the back-end.</summary>
        Unsealable,

        /// <summary>Two sealed memfds whose guest-physical ranges follow each other (two memory slots): a buffer may straddle them.</summary>
        TwoAdjacentRegions,
    }

    public VhostUserChannel Channel { get; }

    public GuestMemory Memory { get; }

    public GuestMemoryAllocator Allocator { get; }

    public static async Task<ScriptedFrontend> ConnectAsync(string socketPath, FrontendMemory memory = FrontendMemory.Sealed) =>
        new(await VhostUserChannel.ConnectAsync(socketPath).WaitAsync(s_timeout), memory);

    public static ScriptedFrontend Over(VhostUserChannel channel) => new(channel, FrontendMemory.Sealed);

    /// <summary>The file behind guest RAM, for a front-end that misbehaves with it (truncates it).</summary>
    public SafeFileDescriptor MemoryFile => Memory.Regions[0].Fd;

    /// <summary>
    /// Guest RAM as a memfd made here without seals. It is mapped like a region received from a
    /// peer: the front-end's own mapping is then also under the SIGBUS guard, so this process
    /// survives its own truncation as the back-end does.
    /// </summary>
    private static GuestMemory PeerMemory(FrontendMemory kind)
    {
        SafeFileDescriptor fd = TestMemfd.Create("scripted-guest-ram", (long)MemorySize, sealable: kind == FrontendMemory.Sealable);
        var memory = new GuestMemory();
        memory.AddRegion(0, MemorySize, PeerUserAddress, fd, 0);
        return memory;
    }

    /// <summary>The user address the front-end announces for <see cref="PeerMemory"/> (any value works: the back-end only translates it).</summary>
    private const ulong PeerUserAddress = 0x7e00_0000_0000;

    public ulong UserAddress(ulong gpa)
    {
        GuestMemoryRegion region = Memory.FindRegion(gpa, 1) ?? throw new ArgumentOutOfRangeException(nameof(gpa));
        return region.UserAddress + (gpa - region.GuestPhysicalAddress);
    }

    public async Task SendAsync(VhostUserRequest request, ReadOnlyMemory<byte> payload = default, IReadOnlyList<SafeHandle>? fds = null, bool needReply = false, uint? flagsOverride = null)
    {
        VhostUserHeader header = VhostUserCodec.RequestHeader(request, payload.Length, needReply);
        if (flagsOverride is { } flags)
        {
            header = new VhostUserHeader(header.Request, flags, header.PayloadSize);
        }

        await Channel.SendAsync(header, payload, fds).AsTask().WaitAsync(s_timeout);
    }

    public Task SendRawAsync(VhostUserHeader header, ReadOnlyMemory<byte> payload, IReadOnlyList<SafeHandle>? fds = null) =>
        Channel.SendAsync(header, payload, fds).AsTask().WaitAsync(s_timeout);

    public async Task<VhostUserMessage> ReceiveAsync() => await Channel.ReceiveAsync().AsTask().WaitAsync(s_timeout);

    public async Task<ulong> GetU64Async(VhostUserRequest request)
    {
        await SendAsync(request);
        using VhostUserMessage reply = await ReceiveAsync();
        VhostUserCodec.ValidateReplyHeader(reply.Header, request);
        return VhostUserCodec.ReadU64(reply.Payload.Span);
    }

    /// <summary>Sends with NEED_REPLY and returns the REPLY_ACK status (0 = success).</summary>
    public async Task<ulong> AckAsync(VhostUserRequest request, ReadOnlyMemory<byte> payload = default, IReadOnlyList<SafeHandle>? fds = null)
    {
        await SendAsync(request, payload, fds, needReply: true);
        using VhostUserMessage reply = await ReceiveAsync();
        Assert.That(reply.Header.Request, Is.EqualTo((uint)request), "reply request code");
        Assert.That(reply.Header.Flags, Is.EqualTo(VhostUserCodec.ReplyFlags), "reply flags");
        return VhostUserCodec.ReadU64(reply.Payload.Span);
    }

    public static byte[] U64(ulong value) => BitConverter.GetBytes(value);

    public static byte[] State(uint index, uint num)
    {
        byte[] b = new byte[VhostUserVringState.Size];
        new VhostUserVringState(index, num).Write(b);
        return b;
    }

    /// <summary>GET_FEATURES, GET/SET_PROTOCOL_FEATURES (everything offered), SET_OWNER. Returns the offered virtio features.</summary>
    public async Task<ulong> HandshakeAsync(VhostUserProtocolFeatures? protocol = null)
    {
        ulong features = await GetU64Async(VhostUserRequest.GET_FEATURES);
        ulong offered = await GetU64Async(VhostUserRequest.GET_PROTOCOL_FEATURES);
        await SendAsync(VhostUserRequest.SET_PROTOCOL_FEATURES, U64((ulong)(protocol ?? (VhostUserProtocolFeatures)offered)));
        await SendAsync(VhostUserRequest.SET_OWNER);
        return features;
    }

    public byte[] MemoryTablePayload()
    {
        var regions = Memory.Regions.Select(r => new VhostUserMemoryRegion(r.GuestPhysicalAddress, r.Size, r.UserAddress, r.FileOffset)).ToArray();
        byte[] payload = new byte[VhostUserMemoryTable.PayloadSize(regions.Length)];
        VhostUserMemoryTable.Write(payload, regions);
        return payload;
    }

    public SafeHandle[] MemoryFds() => Memory.Regions.Select(r => (SafeHandle)r.Fd).ToArray();

    public Task<ulong> SetMemTableAsync() => AckAsync(VhostUserRequest.SET_MEM_TABLE, MemoryTablePayload(), MemoryFds());

    public async Task AddMemRegAsync()
    {
        foreach (GuestMemoryRegion r in Memory.Regions)
        {
            byte[] payload = new byte[VhostUserSingleMemoryRegion.Size];
            new VhostUserSingleMemoryRegion(new VhostUserMemoryRegion(r.GuestPhysicalAddress, r.Size, r.UserAddress, r.FileOffset)).Write(payload);
            Assert.That(await AckAsync(VhostUserRequest.ADD_MEM_REG, payload, [r.Fd]), Is.Zero, "ADD_MEM_REG");
        }
    }

    /// <summary>
    /// What a Linux front-end does before I/O: handshake, SET_MEM_TABLE, SET_FEATURES with
    /// <paramref name="features"/>, then ring 0 set up and enabled.
    /// </summary>
    public async Task<BlkQueue> StartDeviceAsync(ushort queueSize, ulong features, EventFd? call = null)
    {
        await HandshakeAsync();
        Assert.That(await SetMemTableAsync(), Is.Zero, "SET_MEM_TABLE");
        Assert.That(await AckAsync(VhostUserRequest.SET_FEATURES, U64(features)), Is.Zero, "SET_FEATURES");
        return await StartQueueAsync(0, queueSize, features, call: call);
    }

    /// <summary>
    /// Lays a queue out in guest memory and sends NUM, ADDR, BASE, KICK, CALL and ENABLE for it.
    /// <paramref name="call"/> replaces the queue's own call eventfd on the wire (the queue then
    /// finds completions by polling).
    /// </summary>
    public async Task<BlkQueue> StartQueueAsync(uint index, ushort size, ulong features, uint? availableBase = null, BlkQueue? reuse = null, EventFd? call = null)
    {
        BlkQueue queue = reuse ?? new BlkQueue(this, DriverQueue.Create(Memory, Allocator, size, features));
        if (reuse is null)
        {
            _owned.Add(queue);
        }

        Assert.That(await AckAsync(VhostUserRequest.SET_VRING_NUM, State(index, size)), Is.Zero, "SET_VRING_NUM");
        byte[] addr = new byte[VhostUserVringAddr.Size];
        new VhostUserVringAddr(index, 0, UserAddress(queue.Driver.Params.DescriptorArea), UserAddress(queue.Driver.Params.DeviceArea), UserAddress(queue.Driver.Params.DriverArea), 0).Write(addr);
        Assert.That(await AckAsync(VhostUserRequest.SET_VRING_ADDR, addr), Is.Zero, "SET_VRING_ADDR");
        // A packed ring starts at position 0 with wrap counter 1 (virtio 1.2, 2.8.1), bit 15 of the base.
        uint initialBase = availableBase ?? ((features & VirtioFeatures.RING_PACKED) != 0 ? 0x8000u : 0u);
        Assert.That(await AckAsync(VhostUserRequest.SET_VRING_BASE, State(index, initialBase)), Is.Zero, "SET_VRING_BASE");
        Assert.That(await AckAsync(VhostUserRequest.SET_VRING_KICK, U64(index), [queue.Kick.Handle]), Is.Zero, "SET_VRING_KICK");
        Assert.That(await AckAsync(VhostUserRequest.SET_VRING_CALL, U64(index), [(call ?? queue.Call).Handle]), Is.Zero, "SET_VRING_CALL");
        Assert.That(await AckAsync(VhostUserRequest.SET_VRING_ENABLE, State(index, 1)), Is.Zero, "SET_VRING_ENABLE");
        return queue;
    }

    public async Task<uint> GetVringBaseAsync(uint index, uint junk = 0)
    {
        await SendAsync(VhostUserRequest.GET_VRING_BASE, State(index, junk));
        using VhostUserMessage reply = await ReceiveAsync();
        VhostUserCodec.ValidateReplyHeader(reply.Header, VhostUserRequest.GET_VRING_BASE);
        var state = VhostUserVringState.Read(reply.Payload.Span);
        Assert.That(state.Index, Is.EqualTo(index));
        return state.Num;
    }

    /// <summary>Expects the back-end to have closed the connection (it may first answer what was pending).</summary>
    public async Task ExpectDisconnectAsync(TimeSpan? within = null)
    {
        while (true)
        {
            try
            {
                using VhostUserMessage _ = await Channel.ReceiveAsync().AsTask().WaitAsync(within ?? s_timeout);
            }
            catch (VhostUserConnectionLostException)
            {
                return;
            }
        }
    }

    public void Dispose()
    {
        foreach (IDisposable d in _owned)
        {
            d.Dispose();
        }

        Channel.Dispose();
        Memory.Dispose();
    }

    /// <summary>The driver half of one virtio-blk queue plus its kick and call eventfds.</summary>
    public sealed class BlkQueue : IDisposable, IGuestBufferPool
    {
        private readonly ScriptedFrontend _owner;

        public BlkQueue(ScriptedFrontend owner, IDriverQueue driver)
        {
            _owner = owner;
            Driver = driver;
            Requests = new VirtioBlkRequests(driver, owner.Memory, this);
        }

        public IDriverQueue Driver { get; }

        public VirtioBlkRequests Requests { get; }

        public EventFd Kick { get; } = new();

        public EventFd Call { get; } = new();

        public ulong Rent(int size) => _owner.Allocator.Allocate((ulong)size, 16);

        public void Return(ulong address, int size) => _owner.Allocator.Free(address);

        /// <summary>Writes <paramref name="data"/> at <paramref name="sector"/> through the ring and waits for the device.</summary>
        public byte Write(ulong sector, ReadOnlySpan<byte> data)
        {
            ulong buffer = _owner.Allocator.Allocate((ulong)data.Length, 512);
            try
            {
                _owner.Memory.Write(buffer, data);
                VirtioBlkRequest request = Requests.TrySubmitWrite(sector, [new DriverBuffer(buffer, (uint)data.Length, false)])
                    ?? throw new InvalidOperationException("ring full");
                return Complete(request);
            }
            finally
            {
                _owner.Allocator.Free(buffer);
            }
        }

        public byte Read(ulong sector, Span<byte> data)
        {
            ulong buffer = _owner.Allocator.Allocate((ulong)data.Length, 512);
            try
            {
                VirtioBlkRequest request = Requests.TrySubmitRead(sector, [new DriverBuffer(buffer, (uint)data.Length, true)])
                    ?? throw new InvalidOperationException("ring full");
                byte status = Complete(request);
                _owner.Memory.Read(buffer, data);
                return status;
            }
            finally
            {
                _owner.Allocator.Free(buffer);
            }
        }

        /// <summary>Submits a read into <paramref name="buffers"/> of <paramref name="lengthEach"/> bytes each, without waiting.</summary>
        public VirtioBlkRequest SubmitRead(ulong sector, IReadOnlyList<ulong> buffers, uint lengthEach) =>
            Requests.TrySubmitRead(sector, buffers.Select(b => new DriverBuffer(b, lengthEach, true)).ToArray()) ?? throw new InvalidOperationException("ring full");

        /// <summary>Submits without waiting: the request sits in the available ring.</summary>
        public VirtioBlkRequest SubmitWrite(ulong sector, ulong buffer, uint length) =>
            Requests.TrySubmitWrite(sector, [new DriverBuffer(buffer, length, false)]) ?? throw new InvalidOperationException("ring full");

        public void KickDevice()
        {
            if (Driver.NeedsKick())
            {
                Kick.Signal();
            }
        }

        public byte Complete(VirtioBlkRequest request)
        {
            KickDevice();
            DateTime deadline = DateTime.UtcNow + s_timeout;
            while (!request.IsCompleted)
            {
                while (Requests.TryComplete(out _))
                {
                }

                if (request.IsCompleted)
                {
                    break;
                }

                Assert.That(DateTime.UtcNow, Is.LessThan(deadline), "the device did not complete the request");
                Call.Wait(100);
            }

            return request.Status;
        }

        public void Dispose()
        {
            Kick.Dispose();
            Call.Dispose();
        }
    }
}
