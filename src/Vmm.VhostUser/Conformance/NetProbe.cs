using System.Buffers.Binary;
using System.Security.Cryptography;
using Vmm.Virtio.Driver;
using Vmm.Virtio.Spec;

namespace Vmm.VhostUser.Conformance;

/// <summary>
/// virtio-net (virtio 1.2, 5.1): frames on the first queue pair, receiveq1 (0) and transmitq1 (1).
/// The request check sends one frame and expects it back on the receive queue, which is what an
/// echoing back-end does (DPDK testpmd with <c>--forward-mode=io</c> on one port); the lifecycle
/// checks only need the transmit queue to consume frames.
/// </summary>
internal sealed class NetProbe : DeviceProbe
{
    private const int RxRing = VirtioNet.ReceiveQueue;
    private const int TxRing = VirtioNet.TransmitQueue;
    private const int HeaderSize = VirtioNetHeader.Size;

    // Without MRG_RXBUF every receive buffer holds a whole frame (5.1.6.3.1).
    private const int RxBufferSize = 2048;
    private const int RxBuffers = 8;
    private const int FrameSize = 64;

    // IEEE 802 local experimental ethertype: no stack on the way acts on it.
    private const ushort EtherType = 0x88B5;

    private readonly Dictionary<object, ulong> _rxPosted = new(ReferenceEqualityComparer.Instance);
    private ProbeRing? _rxRing;

    public NetProbe()
        : base(VirtioDeviceId.Net)
    {
    }

    public override int MinQueues => 2;

    public override IReadOnlyList<int> Rings => [RxRing, TxRing];

    public override int ProbeRingIndex => TxRing;

    public override string RequestSpec => "virtio 1.2 §5.1.6";

    public override string RequestTitle => "A real request: a net frame echoed";

    // struct virtio_net_config: mac[6], status, max_virtqueue_pairs at 8 (5.1.4); one
    // receive and one transmit queue per pair, plus the control queue.
    public override int? ConfigQueueCount(ReadOnlySpan<byte> config, ulong offered) =>
        (offered & VirtioNetFeatures.MQ) != 0 && config.Length >= VirtioNetConfig.Size
            ? (2 * VirtioNetConfig.Read(config).MaxVirtqueuePairs) + ((offered & VirtioNetFeatures.CTRL_VQ) != 0 ? 1 : 0)
            : null;

    public override async Task<Verdict> RealRequestAsync(ConformanceRun run, CancellationToken cancellationToken)
    {
        ProbeRing rx = run.Ring(RxRing);
        FillReceiveQueue(run, rx);
        byte[] frame = Frame();
        ProbeRequest send = SubmitFrame(run, run.Pool, frame);
        send.Ring.Notify();
        string? error = await run.CompleteAsync(send, cancellationToken).ConfigureAwait(false);
        if (error is not null)
        {
            return Verdict.Fail(error);
        }

        long deadline = Environment.TickCount64 + (long)run.Timeout.TotalMilliseconds;
        int others = 0;
        while (true)
        {
            long left = deadline - Environment.TickCount64;
            ProbeCompletion? received = left <= 0
                ? null
                : await rx.WaitAsync(token: null, TimeSpan.FromMilliseconds(left), take: null, cancellationToken).ConfigureAwait(false);
            if (received is not ProbeCompletion completion)
            {
                return Verdict.Fail(
                    $"the frame was sent (transmit buffer used) but none came back on the receive queue within {run.Timeout.TotalSeconds:0.###} s" +
                    (others > 0 ? $" ({others} other frames arrived)" : "") +
                    "; this check needs a back-end that echoes, as testpmd --forward-mode=io does");
            }

            if (!_rxPosted.Remove(completion.Token, out ulong buffer))
            {
                return Verdict.Fail("the receive queue returned a buffer that was not made available");
            }

            uint length = completion.BytesWritten;
            byte[] bytes = new byte[Math.Min(length, (uint)RxBufferSize)];
            run.Memory.Read(buffer, bytes);
            run.Pool.Return(buffer, RxBufferSize);
            FillReceiveQueue(run, rx);
            if (length >= HeaderSize + FrameSize && bytes.AsSpan(HeaderSize, FrameSize).SequenceEqual(frame))
            {
                return completion.CallSignalled
                    ? Verdict.Pass($"a {FrameSize}-byte frame sent on transmitq1 came back on receiveq1 ({length} bytes with the header)")
                    : Verdict.Fail("the frame came back on receiveq1, but its call eventfd was never signalled (virtio 1.2, 2.7.10)");
            }

            others++;
        }
    }

    public override ProbeRequest SubmitProbe(ConformanceRun run, IGuestBufferPool data)
    {
        // Echoed frames use up receive buffers: keep the queue stocked so the back-end never stalls on it.
        if (run.Features is not null)
        {
            FillReceiveQueue(run, run.Ring(RxRing));
        }

        return SubmitFrame(run, data, Frame());
    }

    public override void Reset()
    {
        _rxPosted.Clear();
        _rxRing = null;
    }

    private static ProbeRequest SubmitFrame(ConformanceRun run, IGuestBufferPool pool, byte[] frame)
    {
        ProbeRing tx = run.Ring(TxRing);
        int size = HeaderSize + frame.Length;
        ulong buffer = Rent(run, pool, size);
        run.Memory.Write(buffer + HeaderSize, frame);
        object token = new();
        Submit(tx, [new DriverBuffer(buffer, (uint)size, false)], token);
        return new ProbeRequest(tx, token, $"a {frame.Length}-byte frame on transmitq1", _ =>
        {
            pool.Return(buffer, size);
            return null;
        });
    }

    /// <summary>Takes back what the receive queue returned and makes buffers available until <see cref="RxBuffers"/> are.</summary>
    private void FillReceiveQueue(ConformanceRun run, ProbeRing rx)
    {
        if (!ReferenceEquals(rx, _rxRing))
        {
            _rxPosted.Clear();
            _rxRing = rx;
        }

        while (rx.Queue.TryTakeUsed(out object? token, out _))
        {
            if (token is not null && _rxPosted.Remove(token, out ulong used))
            {
                run.Pool.Return(used, RxBufferSize);
            }
        }

        bool added = false;
        while (_rxPosted.Count < RxBuffers)
        {
            ulong buffer = Rent(run, run.Pool, RxBufferSize);
            object token = new();
            if (!rx.Queue.TrySubmit([new DriverBuffer(buffer, RxBufferSize, true)], token))
            {
                run.Pool.Return(buffer, RxBufferSize);
                break;
            }

            _rxPosted[token] = buffer;
            added = true;
        }

        if (added)
        {
            rx.Notify();
        }
    }

    /// <summary>A broadcast-free frame between two locally administered MACs with a random body.</summary>
    private static byte[] Frame()
    {
        byte[] frame = new byte[FrameSize];
        ReadOnlySpan<byte> destination = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
        ReadOnlySpan<byte> source = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
        destination.CopyTo(frame);
        source.CopyTo(frame.AsSpan(6));
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(12), EtherType);
        RandomNumberGenerator.Fill(frame.AsSpan(14));
        return frame;
    }
}
