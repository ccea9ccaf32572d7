using System.Numerics;

namespace Vmm.Host.Run;

/// <summary>
/// Latencies in nanoseconds, log-linear buckets (exact below 1024 ns, then 512 buckets per
/// power of two: within 0.2 %). Fixed size, no allocation per value; one writer at a time.
/// </summary>
public sealed class LatencyHistogram
{
    private const int Linear = 1024;
    private const int SubBuckets = 512;
    private const int MaxShift = 40;
    private readonly long[] _counts = new long[Linear + (MaxShift * SubBuckets)];

    public long Count { get; private set; }

    public void Record(long nanoseconds)
    {
        _counts[Index((ulong)Math.Max(0, nanoseconds))]++;
        Count++;
    }

    /// <summary>Adds <paramref name="other"/>'s counts to this one.</summary>
    public void Add(LatencyHistogram other)
    {
        ArgumentNullException.ThrowIfNull(other);
        for (int i = 0; i < _counts.Length; i++)
        {
            _counts[i] += other._counts[i];
        }

        Count += other.Count;
    }

    /// <summary>The value at or below which <paramref name="percentile"/> % of values fall (0 when empty).</summary>
    public long Percentile(double percentile)
    {
        if (Count == 0)
        {
            return 0;
        }

        long rank = Math.Max(1, (long)Math.Ceiling(percentile / 100.0 * Count));
        long seen = 0;
        for (int i = 0; i < _counts.Length; i++)
        {
            seen += _counts[i];
            if (seen >= rank)
            {
                return ValueOf(i);
            }
        }

        return ValueOf(_counts.Length - 1);
    }

    /// <summary>Empties it, for the next window.</summary>
    public void Clear()
    {
        Array.Clear(_counts);
        Count = 0;
    }

    /// <summary>
    /// Moves what <paramref name="concurrent"/> (counts indexed as here, bumped by other threads
    /// with <see cref="Interlocked"/>) gathered into this histogram, leaving it empty.
    /// </summary>
    internal void Drain(long[] concurrent)
    {
        for (int i = 0; i < concurrent.Length && i < _counts.Length; i++)
        {
            if (Volatile.Read(ref concurrent[i]) != 0)
            {
                long n = Interlocked.Exchange(ref concurrent[i], 0);
                _counts[i] += n;
                Count += n;
            }
        }
    }

    /// <summary>How many buckets there are (the length of an array <see cref="Drain"/> takes).</summary>
    internal static int BucketCount => Linear + (MaxShift * SubBuckets);

    internal static int Index(ulong value)
    {
        if (value < Linear)
        {
            return (int)value;
        }

        int shift = Math.Min(MaxShift, 63 - BitOperations.LeadingZeroCount(value) - 9);
        ulong sub = Math.Min(value >> shift, (2 * SubBuckets) - 1);
        return Linear + ((shift - 1) * SubBuckets) + (int)(sub - SubBuckets);
    }

    internal static long ValueOf(int index)
    {
        if (index < Linear)
        {
            return index;
        }

        int shift = ((index - Linear) / SubBuckets) + 1;
        long sub = ((index - Linear) % SubBuckets) + SubBuckets;
        return sub << shift;
    }
}
