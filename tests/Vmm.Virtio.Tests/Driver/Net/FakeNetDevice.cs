using System.Runtime.InteropServices;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Driver.Net;

/// <summary>
/// An in-process virtio-net device the test drives by hand (<see cref="Pump"/>): it takes what
/// the driver transmitted and echoes it into the driver's receive buffers, spreading a frame over
/// several buffers with MRG_RXBUF. <see cref="Deliver"/> writes any bytes into the next receive
/// buffers (malformed frames too); <see cref="AnswerControl"/> acks control commands.
/// </summary>
internal sealed class FakeNetDevice : IVirtioDevice
{
    private readonly IDeviceQueue?[] _queues = new IDeviceQueue?[3];
    private readonly Lock _lock = new();
    private readonly byte[] _config = new byte[VirtioNetConfig.Size];

    public FakeNetDevice(ulong features, byte[] mac, ushort status = VirtioNet.VIRTIO_NET_S_LINK_UP)
    {
        DeviceFeatures = features | VirtioDeviceBase.SupportedRingFeatures;
        new VirtioNetConfig(mac, status, 1, 1500).Write(_config);
    }

    public event Action? ConfigChanged;

    public event Action<DeviceFault>? Faulted
    {
        add { }
        remove { }
    }

    public VirtioDeviceId DeviceId => VirtioDeviceId.Net;

    public ulong DeviceFeatures { get; }

    public int QueueCount => 3;

    public int ConfigSize => VirtioNetConfig.Size;

    public ulong NegotiatedFeatures { get; private set; }

    public List<(byte Class, byte Command, byte[] Data)> Commands { get; } = [];

    public ushort GetMaxQueueSize(int index) => 64;

    public void ReadConfig(uint offset, Span<byte> data)
    {
        data.Clear();
        lock (_lock)
        {
            if (offset < _config.Length)
            {
                _config.AsSpan((int)offset, Math.Min(data.Length, _config.Length - (int)offset)).CopyTo(data);
            }
        }
    }

    public void WriteConfig(uint offset, ReadOnlySpan<byte> data)
    {
    }

    /// <summary>Changes the link bit and raises a configuration change, as a device whose cable was pulled.</summary>
    public void SetLink(bool up)
    {
        lock (_lock)
        {
            _config[VirtioNetConfig.StatusOffset] = (byte)(up ? VirtioNet.VIRTIO_NET_S_LINK_UP : 0);
        }

        ConfigChanged?.Invoke();
    }

    public void StartQueue(int index, VirtqueueResources resources, ulong features, VirtqueueState? initialState = null)
    {
        lock (_lock)
        {
            NegotiatedFeatures = features;
            _queues[index] = DeviceQueue.Create(resources, features, initialState);
        }
    }

    public VirtqueueState? StopQueue(int index)
    {
        lock (_lock)
        {
            VirtqueueState? state = _queues[index]?.GetState();
            _queues[index] = null;
            return state;
        }
    }

    public void Reset()
    {
        lock (_lock)
        {
            Array.Clear(_queues);
        }
    }

    public byte[] SaveState() => [];

    public void RestoreState(ReadOnlySpan<byte> state)
    {
    }

    /// <summary>Takes every transmitted frame (without its header) and echoes each into the receive queue; returns how many.</summary>
    public int Pump()
    {
        lock (_lock)
        {
            IDeviceQueue tx = _queues[VirtioNet.TransmitQueue]!;
            var frames = new List<byte[]>();
            while (tx.TryPop(out DescriptorChain chain))
            {
                byte[] bytes = Gather(tx.Memory, chain);
                frames.Add(bytes[VirtioNetHeader.Size..]);
                tx.Complete(chain, 0);
            }

            tx.NotifyIfNeeded();
            foreach (byte[] frame in frames)
            {
                DeliverLocked(frame);
            }

            return frames.Count;
        }
    }

    /// <summary>Writes a frame behind a header into the next receive buffers, as many as it takes (MRG_RXBUF) or one.</summary>
    public void Deliver(byte[] frame)
    {
        lock (_lock)
        {
            DeliverLocked(frame);
        }
    }

    /// <summary>
    /// Uses receive buffers exactly as given: each entry of <paramref name="buffers"/> is written
    /// into the next buffer and reported with its used length (true or not).
    /// </summary>
    public void DeliverRaw(params (byte[] Bytes, uint Reported)[] buffers)
    {
        lock (_lock)
        {
            IDeviceQueue rx = _queues[VirtioNet.ReceiveQueue]!;
            foreach ((byte[] bytes, uint reported) in buffers)
            {
                if (!rx.TryPop(out DescriptorChain chain))
                {
                    throw new InvalidOperationException("No receive buffer posted.");
                }

                Scatter(rx.Memory, chain, bytes);
                rx.Complete(chain, reported);
            }

            rx.NotifyIfNeeded();
        }
    }

    /// <summary>Answers the pending control commands with <paramref name="ack"/> written as the ack byte; returns how many.</summary>
    public int AnswerControl(byte ack = VirtioNet.VIRTIO_NET_OK, uint? reported = null)
    {
        lock (_lock)
        {
            IDeviceQueue ctrl = _queues[VirtioNet.ControlQueueWithoutMq]!;
            int count = 0;
            while (ctrl.TryPop(out DescriptorChain chain))
            {
                byte[] bytes = Gather(ctrl.Memory, chain);
                Commands.Add((bytes[0], bytes[1], bytes[2..]));
                Scatter(ctrl.Memory, chain, [ack]);
                ctrl.Complete(chain, reported ?? 1);
                count++;
            }

            ctrl.NotifyIfNeeded();
            return count;
        }
    }

    public void Dispose()
    {
    }


    private void DeliverLocked(byte[] frame)
    {
        IDeviceQueue rx = _queues[VirtioNet.ReceiveQueue]!;
        bool mergeable = (NegotiatedFeatures & VirtioNetFeatures.MRG_RXBUF) != 0;
        byte[] packet = new byte[VirtioNetHeader.Size + frame.Length];
        frame.CopyTo(packet, VirtioNetHeader.Size);
        var chains = new List<(DescriptorChain Chain, int Length)>();
        int at = 0;
        while (at < packet.Length)
        {
            if (!rx.TryPop(out DescriptorChain chain))
            {
                throw new InvalidOperationException("The driver posted too few receive buffers for the frame.");
            }

            int room = (int)chain.WritableLength;
            int n = mergeable ? Math.Min(room, packet.Length - at) : packet.Length;
            chains.Add((chain, n));
            at += n;
        }

        var header = new VirtioNetHeader { NumBuffers = (ushort)(mergeable ? chains.Count : 1) };
        MemoryMarshal.Write(packet, in header);
        at = 0;
        foreach ((DescriptorChain chain, int length) in chains)
        {
            Scatter(rx.Memory, chain, packet.AsSpan(at, length));
            rx.Complete(chain, (uint)length);
            at += length;
        }

        rx.NotifyIfNeeded();
    }

    private static byte[] Gather(GuestMemory memory, DescriptorChain chain)
    {
        byte[] bytes = new byte[chain.ReadableLength];
        int at = 0;
        foreach (DescriptorSegment s in chain.Segments.Where(s => !s.IsDeviceWritable))
        {
            memory.Read(s.Address, bytes.AsSpan(at, (int)s.Length));
            at += (int)s.Length;
        }

        return bytes;
    }

    private static void Scatter(GuestMemory memory, DescriptorChain chain, ReadOnlySpan<byte> bytes)
    {
        int at = 0;
        foreach (DescriptorSegment s in chain.Segments.Where(s => s.IsDeviceWritable))
        {
            int n = Math.Min((int)s.Length, bytes.Length - at);
            memory.Write(s.Address, bytes.Slice(at, n));
            at += n;
        }
    }
}
