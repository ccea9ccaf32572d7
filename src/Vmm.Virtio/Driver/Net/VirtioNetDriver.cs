using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Driver.Net;

/// <summary>How the network driver sizes its buffers and how long it waits for the control queue.</summary>
public sealed record VirtioNetDriverOptions
{
    /// <summary>
    /// Receive buffer size with MRG_RXBUF. Smaller than a full frame on purpose: a 1514-byte
    /// frame then spans two buffers, so the merge path is what carries large frames.
    /// </summary>
    public int MergeableBufferSize { get; init; } = 1024;

    /// <summary>How long a control command may wait for its ack.</summary>
    public TimeSpan ControlTimeout { get; init; } = TimeSpan.FromSeconds(5);
}

/// <summary>A device that broke the network driver's expectations beyond dropping a frame (its ring, the control queue).</summary>
public sealed class VirtioNetException : Exception
{
    public VirtioNetException(string message, Exception? inner = null) : base(message, inner)
    {
    }
}

/// <summary>
/// The guest's virtio-net driver (virtio 1.2, 5.1) on one queue pair: receive buffers posted
/// and refilled as frames are taken (one device-writable descriptor each; several per frame
/// with MRG_RXBUF), transmit slots holding the 12-byte virtio_net_hdr and the frame in one
/// descriptor, and the control queue when CTRL_VQ was negotiated. The MAC comes from the config
/// with VIRTIO_NET_F_MAC (else a random locally administered one, as Linux makes), the link
/// state from the status field with VIRTIO_NET_F_STATUS (else up, 5.1.4.2).
/// </summary>
/// <remarks>
/// <para>What a device writes into a receive buffer is checked before it is used: a used length
/// beyond the buffer, a frame shorter than an Ethernet header, a num_buffers of 0 or beyond the
/// ring, a continuation that is missing: the frame is dropped and counted in
/// <see cref="ReceiveErrors"/>, and its buffers go back to the device (Linux does the same).</para>
/// <para>One thread sends and receives; the configuration-change interrupt may update
/// <see cref="LinkUp"/> from another.</para>
/// </remarks>
public sealed class VirtioNetDriver : IDisposable
{
    /// <summary>A transmit slot: header and the longest frame.</summary>
    private const int TransmitSlotSize = 2048;

    private readonly VirtioGuestDriver _driver;
    private readonly GuestMemory _memory;
    private readonly GuestMemoryAllocator _allocator;
    private readonly VirtioNetDriverOptions _options;
    private readonly VirtioDriverQueue _rx;
    private readonly VirtioDriverQueue _tx;
    private readonly VirtioDriverQueue? _ctrl;
    private readonly ulong _rxArea;
    private readonly ulong _txArea;
    private readonly ulong _ctrlArea;
    private readonly Buffer[] _rxBuffers;
    private readonly Stack<Buffer> _freeTx;
    private readonly int _txSlots;
    private int _linkUp;
    private bool _disposed;

    public VirtioNetDriver(VirtioGuestDriver driver, GuestMemory memory, GuestMemoryAllocator allocator, VirtioNetDriverOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(driver);
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(allocator);
        _driver = driver;
        _memory = memory;
        _allocator = allocator;
        _options = options ?? new VirtioNetDriverOptions();
        ulong features = driver.NegotiatedFeatures;
        Mergeable = (features & VirtioNetFeatures.MRG_RXBUF) != 0;
        bool control = (features & VirtioNetFeatures.CTRL_VQ) != 0;
        int needed = control ? VirtioNet.ControlQueueWithoutMq + 1 : VirtioNet.TransmitQueue + 1;
        if (driver.Queues.Count < needed)
        {
            throw new VirtioNetException($"the net device has {driver.Queues.Count} queue(s) set up; receiveq, transmitq{(control ? " and controlq" : string.Empty)} are needed.");
        }

        if ((features & VirtioNetFeatures.MQ) != 0)
        {
            throw new ArgumentException("This driver uses one queue pair: do not negotiate VIRTIO_NET_F_MQ (the control queue would move).", nameof(driver));
        }

        _rx = driver.Queues[VirtioNet.ReceiveQueue];
        _tx = driver.Queues[VirtioNet.TransmitQueue];
        _ctrl = control ? driver.Queues[VirtioNet.ControlQueueWithoutMq] : null;

        Span<byte> config = stackalloc byte[VirtioNetConfig.Size];
        driver.ReadConfig(0, config);
        VirtioNetConfig parsed = VirtioNetConfig.Read(config);
        // 5.1.5: with VIRTIO_NET_F_MAC the config's address; else (or when it is not a unicast address, as Linux checks) a random one.
        MacFromDevice = (features & VirtioNetFeatures.MAC) != 0 && IsUnicast(parsed.Mac);
        Mac = MacFromDevice ? parsed.Mac : RandomMac();
        HasLinkStatus = (features & VirtioNetFeatures.STATUS) != 0;
        _linkUp = !HasLinkStatus || (parsed.Status & VirtioNet.VIRTIO_NET_S_LINK_UP) != 0 ? 1 : 0;

        // Without MRG_RXBUF each buffer holds a whole frame (5.1.6.3.1: at least 1526 bytes).
        ReceiveBufferSize = Mergeable ? Math.Max(_options.MergeableBufferSize, VirtioNetHeader.Size + VirtioNet.EthernetHeaderSize) : 1536;
        int rxCount = _rx.Queue.Size;
        _txSlots = _tx.Queue.Size;
        try
        {
            _rxArea = allocator.Allocate((ulong)rxCount * (ulong)ReceiveBufferSize, 4096);
            _txArea = allocator.Allocate((ulong)_txSlots * TransmitSlotSize, 4096);
            _ctrlArea = control ? allocator.Allocate(4096, 64) : 0;
        }
        catch
        {
            FreeAreas();
            throw;
        }

        _rxBuffers = new Buffer[rxCount];
        for (int i = 0; i < rxCount; i++)
        {
            _rxBuffers[i] = new Buffer(_rxArea + ((ulong)i * (ulong)ReceiveBufferSize));
            Post(_rxBuffers[i]);
        }

        _rx.Notify();
        _freeTx = new Stack<Buffer>(_txSlots);
        for (int i = _txSlots - 1; i >= 0; i--)
        {
            _freeTx.Push(new Buffer(_txArea + ((ulong)i * TransmitSlotSize)));
        }

        // Transmit completions are reaped when slots run short, not on interrupt (as Linux's free_old_xmit).
        lock (_tx.SyncRoot)
        {
            _tx.Queue.DisableInterrupts();
        }

        driver.ConfigChanged += OnConfigChanged;
    }

    public byte[] Mac { get; }

    /// <summary>Whether <see cref="Mac"/> is the device's (VIRTIO_NET_F_MAC with a unicast address) rather than a random one.</summary>
    public bool MacFromDevice { get; }

    public bool HasLinkStatus { get; }

    /// <summary>The link state: the config's VIRTIO_NET_S_LINK_UP with STATUS, else always up.</summary>
    public bool LinkUp => Volatile.Read(ref _linkUp) != 0;

    public bool Mergeable { get; }

    /// <summary>Whether the queues are packed rings (VIRTIO_F_RING_PACKED negotiated).</summary>
    public bool PackedRings => (_driver.NegotiatedFeatures & VirtioFeatures.RING_PACKED) != 0;

    public bool HasControlQueue => _ctrl is not null;

    public int ReceiveBufferSize { get; }

    /// <summary>Receive buffers the device holds at most (the ring's size).</summary>
    public int ReceiveBuffers => _rxBuffers.Length;

    /// <summary>Frames that may be in the transmit ring at once.</summary>
    public int TransmitSlots => _txSlots;

    /// <summary>Receive buffers one frame of <paramref name="frameLength"/> bytes takes.</summary>
    public int BuffersPerFrame(int frameLength) => Mergeable ? (VirtioNetHeader.Size + frameLength + ReceiveBufferSize - 1) / ReceiveBufferSize : 1;

    /// <summary>Frames received and handed out.</summary>
    public long FramesReceived { get; private set; }

    public long FramesSent { get; private set; }

    /// <summary>Frames the device delivered malformed (dropped; their buffers were refilled).</summary>
    public long ReceiveErrors { get; private set; }

    /// <summary>Why the last frame was counted in <see cref="ReceiveErrors"/>.</summary>
    public string? LastReceiveError { get; private set; }

    /// <summary>
    /// Copies <paramref name="frame"/> (an Ethernet frame without FCS, 14 to 1514 bytes) behind a
    /// zeroed virtio_net_hdr into a transmit slot and makes it available; false when every slot is
    /// in the ring. Call <see cref="Flush"/> to notify the device.
    /// </summary>
    public bool TrySend(ReadOnlySpan<byte> frame)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (frame.Length < VirtioNet.EthernetHeaderSize || frame.Length > VirtioNet.MaximumFrame)
        {
            throw new ArgumentException($"A frame is {VirtioNet.EthernetHeaderSize} to {VirtioNet.MaximumFrame} bytes, not {frame.Length}.", nameof(frame));
        }

        ReapTransmitted();
        if (!_freeTx.TryPop(out Buffer? slot))
        {
            return false;
        }

        Span<byte> bytes = _memory.GetSpan(slot.Address, VirtioNetHeader.Size + frame.Length);
        // 5.1.6.2: no offloads asked (flags 0, GSO_NONE); num_buffers is the device's to set on receive.
        bytes[..VirtioNetHeader.Size].Clear();
        frame.CopyTo(bytes[VirtioNetHeader.Size..]);
        if (!_tx.TrySubmit([new DriverBuffer(slot.Address, (uint)bytes.Length, false)], slot))
        {
            _freeTx.Push(slot);
            return false;
        }

        FramesSent++;
        return true;
    }

    /// <summary>Notifies the device of what <see cref="TrySend"/> queued (when it asked to be).</summary>
    public void Flush() => _tx.Notify();

    /// <summary>
    /// Takes the next received frame into <paramref name="destination"/> (at least 65550 bytes
    /// is always enough) and returns its length, or -1 when none is there. Malformed frames are
    /// dropped and counted; their buffers go back to the device.
    /// </summary>
    public int TryReceive(Span<byte> destination)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        try
        {
            while (true)
            {
                if (!_rx.TryTakeUsed(out object? token, out uint written))
                {
                    return -1;
                }

                int length = Assemble((Buffer)token!, written, destination);
                _rx.Notify();
                if (length >= 0)
                {
                    FramesReceived++;
                    return length;
                }
            }
        }
        catch (VirtqueueException e)
        {
            throw new VirtioNetException($"the net receive queue is broken: {e.Message}", e);
        }
    }

    /// <summary>
    /// Waits up to <paramref name="timeout"/> until a received frame is waiting (true) or not
    /// (false): "enable interrupts, re-check, sleep" (2.7.14).
    /// </summary>
    public bool WaitForReceive(TimeSpan timeout)
    {
        lock (_rx.SyncRoot)
        {
            if (_rx.Queue.EnableInterrupts())
            {
                return true;
            }
        }

        return _rx.WaitForInterrupt(timeout);
    }

    /// <summary>
    /// Waits up to <paramref name="timeout"/> for the device to give back a transmit slot when all
    /// are in the ring; true when one is free.
    /// </summary>
    public bool WaitForTransmitRoom(TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            ReapTransmitted();
            if (_freeTx.Count > 0)
            {
                return true;
            }

            bool pending;
            lock (_tx.SyncRoot)
            {
                pending = _tx.Queue.EnableInterrupts();
            }

            long left = deadline - Environment.TickCount64;
            if (!pending && (left <= 0 || !_tx.WaitForInterrupt(TimeSpan.FromMilliseconds(left))))
            {
                ReapTransmitted();
                return _freeTx.Count > 0;
            }

            lock (_tx.SyncRoot)
            {
                _tx.Queue.DisableInterrupts();
            }
        }
    }

    /// <summary>
    /// Sends a control command (5.1.6.5): class and command, <paramref name="data"/>, and a
    /// device-writable ack byte. True for VIRTIO_NET_OK, false for VIRTIO_NET_ERR; anything else,
    /// or no answer within the timeout, throws <see cref="VirtioNetException"/>.
    /// </summary>
    public bool SendCommand(byte commandClass, byte command, ReadOnlySpan<byte> data)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        VirtioDriverQueue ctrl = _ctrl ?? throw new InvalidOperationException("VIRTIO_NET_F_CTRL_VQ was not negotiated: there is no control queue.");
        if (data.Length > 2048)
        {
            throw new ArgumentException("Control data is at most 2048 bytes here.", nameof(data));
        }

        ulong header = _ctrlArea;
        ulong payload = _ctrlArea + 64;
        ulong ack = _ctrlArea + 4032;
        _memory.WriteByte(header, commandClass);
        _memory.WriteByte(header + 1, command);
        data.CopyTo(_memory.GetSpan(payload, data.Length));
        const byte unanswered = 0xFF;
        _memory.WriteByte(ack, unanswered);
        DriverBuffer[] chain = data.IsEmpty
            ? [new DriverBuffer(header, 2, false), new DriverBuffer(ack, 1, true)]
            : [new DriverBuffer(header, 2, false), new DriverBuffer(payload, (uint)data.Length, false), new DriverBuffer(ack, 1, true)];
        var token = new object();
        if (!ctrl.TrySubmit(chain, token))
        {
            throw new VirtioNetException("the control queue has no room for a command.");
        }

        ctrl.Notify();
        object? done;
        uint written;
        try
        {
            if (!ctrl.WaitForCompletion(_options.ControlTimeout, out done, out written))
            {
                throw new VirtioNetException($"the device did not answer control command {commandClass}.{command} within {_options.ControlTimeout.TotalSeconds:0.#} s.");
            }
        }
        catch (VirtqueueException e)
        {
            throw new VirtioNetException($"the control queue is broken: {e.Message}", e);
        }

        byte answer = _memory.ReadByte(ack);
        if (!ReferenceEquals(done, token) || written != 1 || answer is not (VirtioNet.VIRTIO_NET_OK or VirtioNet.VIRTIO_NET_ERR))
        {
            throw new VirtioNetException($"the device answered control command {commandClass}.{command} with ack 0x{answer:x2} and {written} bytes written (a 1-byte ack of 0 or 1 is due).");
        }

        return answer == VirtioNet.VIRTIO_NET_OK;
    }

    /// <summary>VIRTIO_NET_CTRL_RX_PROMISC (needs VIRTIO_NET_F_CTRL_RX).</summary>
    public bool SetPromiscuous(bool on) => SendCommand(VirtioNet.VIRTIO_NET_CTRL_RX, VirtioNet.VIRTIO_NET_CTRL_RX_PROMISC, [(byte)(on ? 1 : 0)]);

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _driver.ConfigChanged -= OnConfigChanged;

        // The buffers stay with the device until it is reset; the VM's allocator dies with it.
    }

    private static bool IsUnicast(byte[] mac) => (mac[0] & 1) == 0 && mac.AsSpan().ContainsAnyExcept((byte)0);

    /// <summary>A random locally administered unicast address (eth_random_addr).</summary>
    private static byte[] RandomMac()
    {
        byte[] mac = RandomNumberGenerator.GetBytes(6);
        mac[0] = (byte)((mac[0] & 0xFE) | 0x02);
        return mac;
    }

    private void Post(Buffer buffer)
    {
        if (!_rx.TrySubmit([new DriverBuffer(buffer.Address, (uint)ReceiveBufferSize, true)], buffer))
        {
            throw new VirtioNetException("the receive ring refused a buffer it had room for.");
        }
    }

    /// <summary>
    /// The frame whose first buffer is <paramref name="first"/>: its length in
    /// <paramref name="destination"/>, or -1 when it was malformed and dropped. Every buffer taken
    /// is posted again.
    /// </summary>
    private int Assemble(Buffer first, uint written, Span<byte> destination)
    {
        try
        {
            if (written > ReceiveBufferSize || written < VirtioNetHeader.Size + VirtioNet.EthernetHeaderSize)
            {
                return Drop($"a receive buffer came back with {written} bytes (a frame is {VirtioNetHeader.Size + VirtioNet.EthernetHeaderSize} to {ReceiveBufferSize} bytes here)");
            }

            VirtioNetHeader header = MemoryMarshal.Read<VirtioNetHeader>(_memory.GetSpan(first.Address, VirtioNetHeader.Size));
            // Without MRG_RXBUF num_buffers means nothing to the driver (devices leave it 0 or 1; Linux ignores it).
            int count = Mergeable ? header.NumBuffers : 1;
            if (count < 1 || count > _rxBuffers.Length)
            {
                return Drop($"num_buffers is {header.NumBuffers} (1 to {_rxBuffers.Length} possible)");
            }

            int length = (int)written - VirtioNetHeader.Size;
            if (length > destination.Length)
            {
                DropContinuations(count - 1);
                return Drop($"a {length}-byte frame does not fit the {destination.Length}-byte destination");
            }

            _memory.GetSpan(first.Address + VirtioNetHeader.Size, length).CopyTo(destination);
            for (int i = 1; i < count; i++)
            {
                if (!_rx.TryTakeUsed(out object? token, out uint more))
                {
                    return Drop($"num_buffers is {count} but only {i} buffer(s) were used");
                }

                var next = (Buffer)token!;
                try
                {
                    if (more > ReceiveBufferSize || length + (int)more > destination.Length)
                    {
                        DropContinuations(count - 1 - i);
                        return Drop($"buffer {i + 1} of a frame came back with {more} bytes");
                    }

                    _memory.GetSpan(next.Address, (int)more).CopyTo(destination[length..]);
                    length += (int)more;
                }
                finally
                {
                    Post(next);
                }
            }

            return length;
        }
        finally
        {
            // Read out (or dropped): the buffer goes back to the device.
            Post(first);
        }
    }

    private void DropContinuations(int count)
    {
        for (int i = 0; i < count && _rx.TryTakeUsed(out object? token, out _); i++)
        {
            Post((Buffer)token!);
        }
    }

    private int Drop(string reason)
    {
        ReceiveErrors++;
        LastReceiveError = reason;
        return -1;
    }

    private void ReapTransmitted()
    {
        try
        {
            while (_tx.TryTakeUsed(out object? token, out _))
            {
                _freeTx.Push((Buffer)token!);
            }
        }
        catch (VirtqueueException e)
        {
            throw new VirtioNetException($"the net transmit queue is broken: {e.Message}", e);
        }
    }

    private void OnConfigChanged()
    {
        if (!HasLinkStatus)
        {
            return;
        }

        Span<byte> status = stackalloc byte[2];
        _driver.ReadConfig(VirtioNetConfig.StatusOffset, status);
        Volatile.Write(ref _linkUp, (BinaryPrimitives.ReadUInt16LittleEndian(status) & VirtioNet.VIRTIO_NET_S_LINK_UP) != 0 ? 1 : 0);
    }

    private void FreeAreas()
    {
        foreach (ulong area in (ReadOnlySpan<ulong>)[_rxArea, _txArea, _ctrlArea])
        {
            if (area != 0)
            {
                _allocator.Free(area);
            }
        }
    }

    /// <summary>One receive buffer or transmit slot in guest memory (its own object: the ring's token).</summary>
    private sealed class Buffer(ulong address)
    {
        public ulong Address { get; } = address;
    }
}
