using System.Collections.Immutable;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// A device's configuration space as the front-end knows it (immutable): the bytes the back-end
/// last reported (GET_CONFIG) with the guest's writes applied, and which byte ranges the guest
/// wrote. A new back-end gets the written ranges again (one SET_CONFIG per contiguous range,
/// with the current bytes), never the read-only fields around them; so repeated writes to one
/// field cost nothing and the image never grows until reset.
/// </summary>
public sealed class ConfigImage
{
    private readonly byte[] _bytes;

    private ConfigImage(byte[] bytes, ImmutableArray<ConfigWrite> written)
    {
        _bytes = bytes;
        Written = written;
    }

    /// <summary>An image of <paramref name="size"/> zero bytes with nothing written.</summary>
    public static ConfigImage Empty(int size) => new(new byte[Math.Max(0, size)], []);

    /// <summary>The back-end's config, nothing written by the guest.</summary>
    public static ConfigImage FromBackend(ReadOnlySpan<byte> bytes) => new(bytes.ToArray(), []);

    public int Length => _bytes.Length;

    /// <summary>True when the back-end's bytes were never known (no CONFIG, or an error reply) and the guest wrote nothing.</summary>
    public bool IsEmpty => _bytes.Length == 0 && Written.IsEmpty;

    /// <summary>The guest's written ranges, disjoint, sorted by offset, with their current bytes: what a new back-end is given.</summary>
    public ImmutableArray<ConfigWrite> Written { get; }

    /// <summary>A copy of <paramref name="length"/> bytes at <paramref name="offset"/>; shorter (possibly empty) past the end.</summary>
    public byte[] Read(int offset, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        int available = Math.Clamp(_bytes.Length - offset, 0, length);
        return available == 0 ? [] : _bytes.AsSpan(offset, available).ToArray();
    }

    /// <summary>A copy of every byte.</summary>
    public byte[] ToArray() => _bytes.ToArray();

    /// <summary>
    /// The guest wrote <paramref name="data"/> at <paramref name="offset"/>. Bytes past the image
    /// are dropped (IVirtioDevice.WriteConfig: writes beyond the config space are ignored).
    /// </summary>
    public ConfigImage Write(int offset, ReadOnlySpan<byte> data)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        int length = Math.Clamp(_bytes.Length - offset, 0, data.Length);
        if (length == 0)
        {
            return this;
        }

        byte[] bytes = _bytes.ToArray();
        data[..length].CopyTo(bytes.AsSpan(offset));
        return new ConfigImage(bytes, Merge(Written, offset, length, bytes));
    }

    /// <summary>
    /// A back-end reported its config (a new connection's GET_CONFIG): its bytes, with the guest's
    /// written ranges laid over them, since the replay is about to give that back-end the same writes.
    /// </summary>
    public ConfigImage Rebase(ReadOnlySpan<byte> backend) => WithBackend(backend, guestWins: true);

    /// <summary>
    /// The back-end announced a change (CONFIG_CHANGE_MSG) and was asked again: its bytes are the
    /// truth now, including for fields the guest wrote (it applied those writes itself).
    /// </summary>
    public ConfigImage Refresh(ReadOnlySpan<byte> backend) => WithBackend(backend, guestWins: false);

    /// <summary>
    /// The back-end's bytes with the written ranges (clipped to their length) kept: the guest's
    /// bytes over the back-end's when <paramref name="guestWins"/>, else the back-end's in the ranges.
    /// </summary>
    private ConfigImage WithBackend(ReadOnlySpan<byte> backend, bool guestWins)
    {
        byte[] bytes = backend.ToArray();
        var written = ImmutableArray.CreateBuilder<ConfigWrite>(Written.Length);
        foreach (ConfigWrite write in Written)
        {
            int length = Math.Clamp(bytes.Length - write.Offset, 0, write.Data.Length);
            if (length == 0)
            {
                continue;
            }

            Span<byte> field = bytes.AsSpan(write.Offset, length);
            if (guestWins)
            {
                write.Data.AsSpan(0, length).CopyTo(field);
            }

            written.Add(new ConfigWrite(write.Offset, field.ToArray()));
        }

        return new ConfigImage(bytes, written.ToImmutable());
    }

    /// <summary>Adds [offset, offset + length) to the ranges, joining those it touches, and refreshes their bytes.</summary>
    private static ImmutableArray<ConfigWrite> Merge(ImmutableArray<ConfigWrite> ranges, int offset, int length, byte[] bytes)
    {
        int start = offset;
        int end = offset + length;
        var result = ImmutableArray.CreateBuilder<ConfigWrite>(ranges.Length + 1);
        foreach (ConfigWrite range in ranges)
        {
            int rangeEnd = range.Offset + range.Data.Length;
            if (rangeEnd < start || range.Offset > end)
            {
                result.Add(range);
                continue;
            }

            start = Math.Min(start, range.Offset);
            end = Math.Max(end, rangeEnd);
        }

        result.Add(new ConfigWrite(start, bytes.AsSpan(start, end - start).ToArray()));
        result.Sort((a, b) => a.Offset.CompareTo(b.Offset));
        return result.ToImmutable();
    }
}
