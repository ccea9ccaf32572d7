using System.Buffers.Binary;
using System.Collections;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Vmm.Host.Cli;
using Vmm.Virtio.Driver.Net;
using Vmm.Virtio.Spec;

namespace Vmm.Host.Run;

/// <summary>What one echo run counted.</summary>
/// <param name="FrameSize">Bytes of each frame, without the virtio-net header.</param>
/// <param name="Sent">Frames transmitted.</param>
/// <param name="Received">Frames that came back, good or bad.</param>
/// <param name="Bad">Of those, frames that were not one of ours intact: wrong length, payload, addresses, or a repeat.</param>
/// <param name="Seconds">How long the run took.</param>
public sealed record NetEchoResult(int FrameSize, long Sent, long Received, long Bad, double Seconds)
{
    public long Lost => Math.Max(0, Sent - (Received - Bad));

    public double FramesPerSecond => Seconds > 0 ? (Received - Bad) / Seconds : 0;

    public bool Clean => Received == Sent && Bad == 0;
}

/// <summary>
/// The workloads of a net device against a back-end that echoes every frame (DPDK testpmd's io
/// forwarding on one port): <c>net</c> sends frames of varied sizes and checks every one comes
/// back intact; <c>bench</c> measures echoed frames per second at 64 and 1514 bytes.
/// </summary>
public static class NetWorkloads
{
    /// <summary>IEEE 802 "local experimental" EtherType: no stack on the way treats these frames as its own.</summary>
    public const ushort EtherType = 0x88B5;

    /// <summary>How long the echo may make no progress at all before what is missing counts as lost.</summary>
    public static readonly TimeSpan IdleTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Frame sizes of the bench (without FCS).</summary>
    public static readonly int[] BenchSizes = [64, 1514];

    // Frame layout after the Ethernet header: sequence number (le32), frame length (le16), then the pattern.
    private const int SequenceOffset = VirtioNet.EthernetHeaderSize;
    private const int LengthOffset = SequenceOffset + 4;
    private const int PatternOffset = LengthOffset + 2;

    /// <summary>The size of frame <paramref name="sequence"/> of the net workload: 60, then spread over 60 to 1514 (7919 is prime to the 1455 sizes, so all occur).</summary>
    public static int VariedSize(long sequence) => VirtioNet.MinimumFrame + (int)(sequence * 7919 % (VirtioNet.MaximumFrame - VirtioNet.MinimumFrame + 1));

    /// <summary>
    /// <c>net</c>: sends <paramref name="frames"/> frames (sizes from <see cref="VariedSize"/>,
    /// each payload its own), keeping no more in flight than the receive ring can take back, and
    /// checks every echo. Prints <c>net: sent N, received N, bad 0</c> and the rate; lost or bad
    /// frames are a workload failure (exit 1) after that line.
    /// </summary>
    public static NetEchoResult Echo(VirtioNetDriver net, int frames, TextWriter output, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(net);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(log);
        CheckLink(net);
        NetEchoResult r = Run(net, frames, VariedSize, Timeout.InfiniteTimeSpan, CancellationToken.None);
        output.WriteLine(string.Create(
            CultureInfo.InvariantCulture,
            $"net: sent {r.Sent}, received {r.Received}, bad {r.Bad} ({r.FramesPerSecond:0} frames/s, {r.Seconds * 1000:0} ms)"));
        log.WriteLine(Describe(net));
        if (!r.Clean)
        {
            throw new WorkloadFailedException(string.Create(
                CultureInfo.InvariantCulture,
                $"{r.Lost} frame(s) lost and {r.Bad} bad of {r.Sent} sent{(net.ReceiveErrors > 0 ? $"; the driver dropped {net.ReceiveErrors} malformed ({net.LastReceiveError})" : string.Empty)}."));
        }

        return r;
    }

    /// <summary><c>bench</c> on a net device: echoed frames per second for each of <see cref="BenchSizes"/>, <c>--seconds</c> each.</summary>
    public static IReadOnlyList<NetEchoResult> Bench(VirtioNetDriver net, RunOptions options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(net);
        ArgumentNullException.ThrowIfNull(options);
        CheckLink(net);
        var results = new List<NetEchoResult>();
        foreach (int size in BenchSizes)
        {
            NetEchoResult r = Run(net, int.MaxValue, _ => size, TimeSpan.FromSeconds(options.Seconds), cancellationToken);
            if (r.Bad > 0 || r.Lost > 0)
            {
                throw new WorkloadFailedException($"{r.Lost} frame(s) lost and {r.Bad} bad of {r.Sent} {size}-byte frames in the bench.");
            }

            results.Add(r);
        }

        return results;
    }

    public static void WriteBench(TextWriter output, RunOptions options, IReadOnlyList<NetEchoResult> results)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(results);
        string ring = options.PackedRing ? "packed" : "split";
        if (options.Json)
        {
            BenchJson.WriteLine(output, options, "net", json =>
            {
                foreach (NetEchoResult r in results)
                {
                    json.WriteNumber($"fps_{r.FrameSize}", Math.Round(r.FramesPerSecond, 1));
                    json.WriteNumber($"mbit_s_{r.FrameSize}", Math.Round(r.FramesPerSecond * r.FrameSize * 8 / 1e6, 1));
                }

                json.WriteNumber("errors", results.Sum(r => r.Bad + r.Lost));
                json.WriteNumber("seconds", results.Sum(r => r.Seconds));
                json.WriteBoolean("mrg_rxbuf", options.MergeableRxBuffers);
            });
            return;
        }

        output.WriteLine($"bench: net echo through the back-end, transport={RunOptions.Name(options.Transport)} ring={ring}{(options.MergeableRxBuffers ? string.Empty : " no-mrg-rxbuf")}");
        foreach (NetEchoResult r in results)
        {
            output.WriteLine(string.Create(
                CultureInfo.InvariantCulture,
                $"  {r.FrameSize,4}-byte frames: {r.FramesPerSecond:N0} frames/s ({r.FramesPerSecond * r.FrameSize * 8 / 1e6:0.0} Mbit/s each way), {r.Received:N0} echoed in {r.Seconds:0.###} s, errors {r.Bad + r.Lost}"));
        }
    }

    /// <summary>Writes frame <paramref name="sequence"/> of <paramref name="length"/> bytes, addressed from and to <paramref name="mac"/>.</summary>
    public static void BuildFrame(Span<byte> frame, byte[] mac, long sequence, int length)
    {
        ArgumentNullException.ThrowIfNull(mac);
        Span<byte> f = frame[..length];
        mac.CopyTo(f);
        mac.CopyTo(f[6..]);
        BinaryPrimitives.WriteUInt16BigEndian(f[12..], EtherType);
        BinaryPrimitives.WriteUInt32LittleEndian(f[SequenceOffset..], (uint)sequence);
        BinaryPrimitives.WriteUInt16LittleEndian(f[LengthOffset..], (ushort)length);
        Payload(sequence, length).CopyTo(f[PatternOffset..]);
    }

    /// <summary>The sequence number of <paramref name="frame"/> when it is one of ours, intact; else -1.</summary>
    public static long CheckFrame(ReadOnlySpan<byte> frame, byte[] mac)
    {
        ArgumentNullException.ThrowIfNull(mac);
        if (frame.Length < PatternOffset || BinaryPrimitives.ReadUInt16LittleEndian(frame[LengthOffset..]) != frame.Length ||
            !frame[..6].SequenceEqual(mac) || !frame[6..12].SequenceEqual(mac) || BinaryPrimitives.ReadUInt16BigEndian(frame[12..]) != EtherType)
        {
            return -1;
        }

        long sequence = BinaryPrimitives.ReadUInt32LittleEndian(frame[SequenceOffset..]);
        return frame[PatternOffset..].SequenceEqual(Payload(sequence, frame.Length)) ? sequence : -1;
    }

    /// <summary>
    /// The payload of frame <paramref name="sequence"/>: a window of a fixed pseudo-random table
    /// that starts at a place the sequence number picks, so neighbouring frames differ and
    /// building and checking a frame are one copy and one compare.
    /// </summary>
    private static ReadOnlySpan<byte> Payload(long sequence, int length)
    {
        int start = (int)((uint)sequence * 2654435761u % (uint)(s_payloadTable.Length - VirtioNet.MaximumFrame));
        return s_payloadTable.AsSpan(start, length - PatternOffset);
    }

    private static readonly byte[] s_payloadTable = MakePayloadTable();

    private static byte[] MakePayloadTable()
    {
        byte[] table = new byte[16 * 1024];
        new Random(0x5eed).NextBytes(table);
        return table;
    }

    private static void CheckLink(VirtioNetDriver net)
    {
        if (!net.LinkUp)
        {
            throw new WorkloadFailedException("The net device reports its link down (VIRTIO_NET_S_LINK_UP clear).");
        }
    }

    private static string Describe(VirtioNetDriver net) => string.Create(
        CultureInfo.InvariantCulture,
        $"net: mac {string.Join(':', net.Mac.Select(b => b.ToString("x2", CultureInfo.InvariantCulture)))} ({(net.MacFromDevice ? "from the device" : "random: the device has no VIRTIO_NET_F_MAC")}), " +
        $"link {(net.HasLinkStatus ? (net.LinkUp ? "up" : "down") : "up (no VIRTIO_NET_F_STATUS)")}, " +
        $"{(net.Mergeable ? $"MRG_RXBUF with {net.ReceiveBufferSize}-byte buffers" : $"no MRG_RXBUF, {net.ReceiveBufferSize}-byte buffers")}, " +
        $"control queue {(net.HasControlQueue ? "yes" : "no")}, {(net.PackedRings ? "packed" : "split")} rings, {net.ReceiveBuffers} receive buffers, {net.TransmitSlots} transmit slots, {net.ReceiveErrors} malformed frames dropped");

    /// <summary>
    /// Sends up to <paramref name="frames"/> frames (sizes from <paramref name="size"/>) for at most
    /// <paramref name="duration"/>, never more in flight than the receive ring holds, and counts
    /// the echoes until all are back or nothing arrives for <see cref="IdleTimeout"/>.
    /// </summary>
    private static NetEchoResult Run(VirtioNetDriver net, int frames, Func<long, int> size, TimeSpan duration, CancellationToken cancellationToken)
    {
        // A frame in flight needs its receive buffers free when it comes back; the device drops what finds none.
        int window = Math.Max(1, Math.Min(net.TransmitSlots, net.ReceiveBuffers / net.BuffersPerFrame(VirtioNet.MaximumFrame)));
        byte[] frame = new byte[VirtioNet.MaximumFrame];
        byte[] received = new byte[64 * 1024];
        var seen = new BitArray(Math.Min(frames, 1 << 24));
        long sent = 0;
        long back = 0;
        long bad = 0;
        var clock = Stopwatch.StartNew();
        long end = duration == Timeout.InfiniteTimeSpan ? long.MaxValue : (long)duration.TotalMilliseconds;
        long lastProgress = 0;
        double lastEcho = 0;
        while (true)
        {
            bool sending = sent < frames && clock.ElapsedMilliseconds < end && !cancellationToken.IsCancellationRequested;
            bool queued = false;
            while (sending && sent < frames && sent - back < window)
            {
                int length = size(sent);
                BuildFrame(frame, net.Mac, sent, length);
                if (!net.TrySend(frame.AsSpan(0, length)))
                {
                    break;
                }

                sent++;
                queued = true;
            }

            if (queued)
            {
                net.Flush();
            }

            bool progress = false;
            int length2;
            while ((length2 = net.TryReceive(received)) >= 0)
            {
                progress = true;
                back++;
                lastEcho = clock.Elapsed.TotalSeconds;
                long sequence = CheckFrame(received.AsSpan(0, length2), net.Mac);
                if (sequence < 0 || sequence >= sent || (sequence < seen.Length && seen[(int)sequence]) || (sequence < frames && size(sequence) != length2))
                {
                    bad++;
                }
                else if (sequence < seen.Length)
                {
                    seen[(int)sequence] = true;
                }
            }

            if (progress || queued)
            {
                lastProgress = clock.ElapsedMilliseconds;
            }

            if (back >= sent && !(sent < frames && clock.ElapsedMilliseconds < end && !cancellationToken.IsCancellationRequested))
            {
                break;
            }

            if (clock.ElapsedMilliseconds - lastProgress > (long)IdleTimeout.TotalMilliseconds)
            {
                break;
            }

            if (!progress)
            {
                net.WaitForReceive(TimeSpan.FromMilliseconds(100));
            }
        }

        // The rate counts up to the last echo: a wait for frames that never came is not part of it.
        return new NetEchoResult(size(0), sent, back, bad, Math.Round(Math.Max(lastEcho, 1e-6), 3));
    }
}
