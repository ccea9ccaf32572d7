using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Vmm.Virtio.Driver.Fs;
using Vmm.Virtio.Spec;

namespace Vmm.Host.Run;

/// <summary>What the fs bench measured: sequential reads of one file, and the write that made it.</summary>
public sealed record FsBenchResult(long FileBytes, int RequestSize, int Depth, long Requests, long Bytes, double Seconds, double MibPerSecond, double WriteMibPerSecond);

public static partial class FsWorkloads
{
    /// <summary>Size of the file the fs bench writes and then reads.</summary>
    public const long BenchFileBytes = 128L << 20;

    /// <summary>
    /// <c>bench</c> on an fs device: writes a <see cref="BenchFileBytes"/> file in the export
    /// (max_write requests; timed), fsyncs it, then reads it sequentially from start to end, over
    /// and over, for <c>--seconds</c> with <c>--iodepth</c> READs of max_read bytes in flight, and
    /// removes it. The reads are checked for length, not content (fs-verify checks content).
    /// </summary>
    public static FsBenchResult Bench(FsGuest fs, RunOptions options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(fs);
        ArgumentNullException.ThrowIfNull(options);
        FuseInitResult init = fs.Start();
        VirtioFsSession session = fs.Session;
        byte[] name = Encoding.ASCII.GetBytes($".vmm-fs-bench-{Environment.ProcessId}-{RandomNumberGenerator.GetHexString(8, lowercase: true)}");
        return fs.Run(() =>
        {
            (FuseEntry entry, FuseHandle writer) = session.Create(Fuse.RootId, name, Fuse.O_RDWR | Fuse.O_EXCL, 0x1A4 /* 0644 */);
            try
            {
                byte[] chunk = new byte[init.MaxWrite & ~7];
                var writing = Stopwatch.StartNew();
                for (long offset = 0; offset < BenchFileBytes; offset += chunk.Length)
                {
                    int length = (int)Math.Min(chunk.Length, BenchFileBytes - offset);
                    VerifyPattern.Fill(chunk.AsSpan(0, length & ~7), (ulong)offset);
                    session.WriteAll(writer, (ulong)offset, chunk.AsSpan(0, length));
                }

                session.Fsync(writer);
                double writeSeconds = writing.Elapsed.TotalSeconds;
                session.Flush(writer);
                session.Release(writer, Fuse.O_RDWR);
                FuseHandle reader = session.Open(entry.NodeId, Fuse.O_RDONLY);
                try
                {
                    FsBenchResult result = ReadFor(session, reader, init.MaxRead, Math.Min(options.IoDepth, session.MaxRequestsInFlight), options.Seconds, cancellationToken);
                    return result with { WriteMibPerSecond = Math.Round(BenchFileBytes / (double)(1 << 20) / Math.Max(writeSeconds, 1e-9), 1) };
                }
                finally
                {
                    session.Release(reader, Fuse.O_RDONLY);
                }
            }
            finally
            {
                if (session.LostReason is null)
                {
                    session.Forget(entry.NodeId);
                    session.Unlink(Fuse.RootId, name);
                }
            }
        });
    }

    public static void WriteBench(TextWriter output, RunOptions options, FsBenchResult r)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(r);
        if (options.Json)
        {
            using var stream = new MemoryStream();
            using (var json = new Utf8JsonWriter(stream))
            {
                json.WriteStartObject();
                json.WriteNumber("mib_s", r.MibPerSecond);
                json.WriteNumber("write_mib_s", r.WriteMibPerSecond);
                json.WriteNumber("requests", r.Requests);
                json.WriteNumber("request_size", r.RequestSize);
                json.WriteNumber("iodepth", r.Depth);
                json.WriteNumber("file_bytes", r.FileBytes);
                json.WriteNumber("seconds", r.Seconds);
                json.WriteNumber("errors", 0);
                json.WriteString("rw", "read");
                json.WriteString("device", "fs");
                json.WriteString("transport", RunOptions.Name(options.Transport));
                json.WriteString("ring", options.PackedRing ? "packed" : "split");
                json.WriteEndObject();
            }

            output.WriteLine(Encoding.UTF8.GetString(stream.ToArray()));
            return;
        }

        output.WriteLine(string.Create(
            CultureInfo.InvariantCulture,
            $"bench: fs sequential read of a {r.FileBytes >> 20} MiB file, requests of {r.RequestSize} bytes, iodepth={r.Depth} transport={RunOptions.Name(options.Transport)} ring={(options.PackedRing ? "packed" : "split")} for {r.Seconds:0.###} s"));
        output.WriteLine(string.Create(
            CultureInfo.InvariantCulture,
            $"  MiB/s {r.MibPerSecond:0.0}  requests {r.Requests:N0}  (writing the file: {r.WriteMibPerSecond:0.0} MiB/s with fsync)"));
    }

    private static FsBenchResult ReadFor(VirtioFsSession session, FuseHandle file, int piece, int depth, int seconds, CancellationToken cancellationToken)
    {
        long pieces = BenchFileBytes / piece;
        long next = 0;
        long requests = 0;
        long bytes = 0;
        var inFlight = new Queue<VirtioFsSession.PendingRead>();
        long start = Stopwatch.GetTimestamp();
        long end = start + (long)(seconds * (double)Stopwatch.Frequency);
        long stopped = 0;
        while (true)
        {
            bool running = stopped == 0 && !cancellationToken.IsCancellationRequested && Stopwatch.GetTimestamp() < end;
            if (!running && stopped == 0)
            {
                stopped = Stopwatch.GetTimestamp();
            }

            while (running && inFlight.Count < depth)
            {
                inFlight.Enqueue(session.SubmitRead(file, (ulong)(next % pieces * piece), piece));
                next++;
            }

            if (!inFlight.TryDequeue(out VirtioFsSession.PendingRead? read))
            {
                break;
            }

            int got = session.CompleteRead(read).Length;
            if (got != read.Size)
            {
                throw new FuseProtocolException($"a READ of {read.Size} bytes at {read.Offset} inside the {BenchFileBytes}-byte bench file returned {got}");
            }

            requests++;
            bytes += got;
        }

        double elapsed = (stopped - start) / (double)Stopwatch.Frequency;
        return new FsBenchResult(BenchFileBytes, piece, depth, requests, bytes, Math.Round(elapsed, 3), Math.Round(bytes / (double)(1 << 20) / Math.Max(elapsed, 1e-9), 1), 0);
    }
}
