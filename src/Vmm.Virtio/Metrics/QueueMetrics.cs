using System.Diagnostics;

namespace Vmm.Virtio.Metrics;

/// <summary>
/// The counters of one queue of one device, on one side (<see cref="QueueInstruments"/>). Each
/// counter has a single writer (the queue's worker thread on the device side; the submitting
/// thread, under its queue's lock, on the driver side; the call router for proxied
/// interrupts): increments are plain stores, published with release semantics so the
/// instruments' callbacks on another thread read whole, recent values. No lock, no allocation.
/// </summary>
public sealed class QueueMetrics
{
    /// <summary>How many <see cref="RequestDirection"/> values there are.</summary>
    internal const int Directions = 3;

    private readonly QueueInstruments _owner;
    private readonly KeyValuePair<string, object?>[][] _directionTags;
    private readonly TagList[] _durationTags;
    private long _kicks;
    private long _interrupts;
    private long _faults;
    private long _readRequests;
    private long _writeRequests;
    private long _otherRequests;
    private long _readBytes;
    private long _writeBytes;
    private long _otherBytes;
    private int _inFlight;

    internal QueueMetrics(QueueInstruments owner, string device, int queue)
    {
        _owner = owner;
        Device = device;
        Queue = queue;
        Tags = [new(VmmMeters.DeviceTag, device), new(VmmMeters.QueueTag, queue)];
        _directionTags = new KeyValuePair<string, object?>[Directions][];
        _durationTags = new TagList[Directions];
        for (int d = 0; d < Directions; d++)
        {
            KeyValuePair<string, object?> direction = new(VmmMeters.DirectionTag, ((RequestDirection)d).Name());
            _directionTags[d] = [.. Tags, direction];
            _durationTags[d] = new TagList(_directionTags[d]);
        }
    }

    public string Device { get; }

    public int Queue { get; }

    public long Kicks => Volatile.Read(ref _kicks);

    public long Interrupts => Volatile.Read(ref _interrupts);

    public long Faults => Volatile.Read(ref _faults);

    public int InFlight => Volatile.Read(ref _inFlight);

    internal KeyValuePair<string, object?>[] Tags { get; }

    public long Requests(RequestDirection direction) => direction switch
    {
        RequestDirection.Read => Volatile.Read(ref _readRequests),
        RequestDirection.Write => Volatile.Read(ref _writeRequests),
        _ => Volatile.Read(ref _otherRequests),
    };

    public long Bytes(RequestDirection direction) => direction switch
    {
        RequestDirection.Read => Volatile.Read(ref _readBytes),
        RequestDirection.Write => Volatile.Read(ref _writeBytes),
        _ => Volatile.Read(ref _otherBytes),
    };

    /// <summary>A kick arrived (device side) or was sent (driver side).</summary>
    public void Kicked() => Volatile.Write(ref _kicks, _kicks + 1);

    /// <summary>An interrupt was raised (device side) or proxied (front-end side).</summary>
    public void Interrupted() => Volatile.Write(ref _interrupts, _interrupts + 1);

    /// <summary>The queue stopped on an error (rare; any thread).</summary>
    public void Faulted() => Interlocked.Increment(ref _faults);

    /// <summary>Requests started and not completed, as the writer counts them.</summary>
    public void SetInFlight(int count) => Volatile.Write(ref _inFlight, count);

    /// <summary>
    /// What a request's start records: a timestamp while the latency histogram has a listener, 0
    /// otherwise (then no clock is read at all).
    /// </summary>
    public long StartTimestamp() => _owner.Duration.Enabled ? Stopwatch.GetTimestamp() : 0;

    /// <summary>
    /// A request completed: <paramref name="bytes"/> of data moved (0 when it failed), started at
    /// <paramref name="startTimestamp"/> (from <see cref="StartTimestamp"/>; 0: not timed).
    /// </summary>
    public void Completed(RequestDirection direction, long bytes, long startTimestamp)
    {
        switch (direction)
        {
            case RequestDirection.Read:
                Volatile.Write(ref _readRequests, _readRequests + 1);
                Volatile.Write(ref _readBytes, _readBytes + bytes);
                break;
            case RequestDirection.Write:
                Volatile.Write(ref _writeRequests, _writeRequests + 1);
                Volatile.Write(ref _writeBytes, _writeBytes + bytes);
                break;
            default:
                Volatile.Write(ref _otherRequests, _otherRequests + 1);
                Volatile.Write(ref _otherBytes, _otherBytes + bytes);
                break;
        }

        if (startTimestamp != 0 && _owner.Duration.Enabled)
        {
            _owner.Duration.Record(Stopwatch.GetElapsedTime(startTimestamp).TotalSeconds, in _durationTags[(int)direction]);
        }
    }

    internal KeyValuePair<string, object?>[] DirectionTags(int direction) => _directionTags[direction];
}
