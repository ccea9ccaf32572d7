using NUnit.Framework;
using Vmm.Core.Posix;

namespace Vmm.Core.Tests.Posix;

[TestFixture]
public sealed class PipeTests
{
    [Test]
    public async Task Bytes_larger_than_the_pipe_buffer_arrive_whole_and_end_at_close()
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        byte[] data = new byte[1 << 20];
        new Random(5).NextBytes(data);
        using (read)
        {
            Task writer = Task.Run(() =>
            {
                using (write)
                {
                    Pipe.WriteAll(write, data);
                }
            });
            byte[] got = await Task.Run(() => Pipe.ReadToEnd(read, data.Length));
            await writer;
            Assert.That(got, Is.EqualTo(data));
        }
    }

    [Test]
    public async Task More_than_the_limit_is_refused_without_growing_past_it()
    {
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        using (read)
        {
            Task writer = Task.Run(() =>
            {
                using (write)
                {
                    try
                    {
                        Pipe.WriteAll(write, new byte[200_000]);
                    }
                    catch (PosixException)
                    {
                        // EPIPE once the reader gave up.
                    }
                }
            });
            Assert.That(() => Pipe.ReadToEnd(read, 100_000), Throws.InstanceOf<InvalidDataException>());
            read.Dispose();
            await writer;
        }
    }

    [Test]
    public void Both_ends_are_descriptors_that_are_released()
    {
        int before = OpenFds();
        (SafeFileDescriptor read, SafeFileDescriptor write) = Pipe.Create();
        Assert.That(OpenFds(), Is.EqualTo(before + 2));
        read.Dispose();
        write.Dispose();
        Assert.That(OpenFds(), Is.EqualTo(before));
    }

    /// <summary>Every open descriptor (proc(5)); nothing else runs between the counts here.</summary>
    private static int OpenFds() => Directory.GetFileSystemEntries("/proc/self/fd").Length;
}
