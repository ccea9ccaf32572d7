using NUnit.Framework;
using Vmm.Host.Cli;
using Vmm.Virtio.Spec;
using Vmm.VhostUser.Frontend;

namespace Vmm.Host.Tests.Cli;

[TestFixture]
public sealed class VhostUserSpecTests
{
    [Test]
    public void A_full_spec_parses_and_becomes_device_options()
    {
        VhostUserSpec spec = VhostUserSpec.Parse("/run/blk.sock,type=blk,queues=2,queue-size=128,reconnect=on,reconnect-max=5");
        Assert.That(spec, Is.EqualTo(new VhostUserSpec("/run/blk.sock", VirtioDeviceId.Block, 2, 128, true, 5)));

        VhostUserDeviceOptions options = spec.ToOptions("blk0");
        Assert.Multiple(() =>
        {
            Assert.That(options.SocketPath, Is.EqualTo("/run/blk.sock"));
            Assert.That(options.DeviceId, Is.EqualTo(VirtioDeviceId.Block));
            Assert.That(options.Name, Is.EqualTo("blk0"));
            Assert.That(options.Queues, Is.EqualTo(2));
            Assert.That(options.QueueSize, Is.EqualTo(128));
            Assert.That(options.Reconnect, Is.True);
            Assert.That(options.ReconnectMax, Is.EqualTo(5));
            Assert.That(options.ReconnectMaxBackoff, Is.EqualTo(TimeSpan.FromSeconds(5)), "the default cap");
        });
    }

    [Test]
    public void A_fs_tag_becomes_the_config_the_vmm_serves_without_a_backend_config()
    {
        VhostUserDeviceOptions options = VhostUserSpec.Parse("/run/fs.sock,type=fs,queues=3,tag=shared").ToOptions("fs0");

        Assert.That(options.LocalConfig, Is.Not.Null);
        VirtioFsConfig config = VirtioFsConfig.Read(options.LocalConfig!.Value.Span);
        Assert.That(config.Tag, Is.EqualTo("shared"));
        Assert.That(config.NumRequestQueues, Is.EqualTo(2), "queues=3 is hiprio and two request queues");
        Assert.That(VhostUserSpec.Parse("/run/fs.sock,type=fs").ToOptions("fs0").LocalConfig, Is.Null);
    }

    [Test]
    public void Wait_on_waits_for_a_backend_that_is_not_listening_yet()
    {
        Assert.That(VhostUserSpec.Parse("/run/blk.sock,type=blk,wait=on").ToOptions("blk0").WaitForBackend, Is.True);
        Assert.That(VhostUserSpec.Parse("/run/blk.sock,type=blk").ToOptions("blk0").WaitForBackend, Is.False);
        Assert.That(() => VhostUserSpec.Parse("/run/blk.sock,type=blk,wait=maybe"), Throws.TypeOf<UsageException>());
    }

    [TestCase("/run/fs.sock,type=fs,tag=" + "0123456789012345678901234567890123456")]
    [TestCase("/run/blk.sock,type=blk,tag=x")]
    [TestCase("/run/fs.sock,type=fs,tag=")]
    public void A_bad_fs_tag_is_a_usage_error(string spec) =>
        Assert.That(() => VhostUserSpec.Parse(spec), Throws.TypeOf<UsageException>());

    [Test]
    public void Reconnect_max_delay_caps_the_backoff_in_seconds()
    {
        VhostUserDeviceOptions options = VhostUserSpec.Parse("/run/blk.sock,type=blk,reconnect-max-delay=60").ToOptions("blk0");
        Assert.That(options.ReconnectMaxBackoff, Is.EqualTo(TimeSpan.FromSeconds(60)));
        Assert.That(() => VhostUserSpec.Parse("/run/blk.sock,type=blk,reconnect-max-delay=0"), Throws.TypeOf<UsageException>());
    }

    [TestCase("s,type=blk", VirtioDeviceId.Block)]
    [TestCase("s,type=rng", VirtioDeviceId.Entropy)]
    [TestCase("s,type=net", VirtioDeviceId.Net)]
    [TestCase("s,type=fs", VirtioDeviceId.FileSystem)]
    [TestCase("s,type=console", VirtioDeviceId.Console)]
    [TestCase("s,type=gpio", VirtioDeviceId.Gpio)]
    [TestCase("s,type=vsock", VirtioDeviceId.Socket)]
    [TestCase("s,device-id=2", VirtioDeviceId.Block)]
    [TestCase("s,device-id=42", (VirtioDeviceId)42)]
    public void Types_map_to_virtio_device_ids(string text, VirtioDeviceId id) =>
        Assert.That(VhostUserSpec.Parse(text).DeviceId, Is.EqualTo(id));

    [Test]
    public void Defaults_are_the_back_ends_queues_size_256_and_unlimited_reconnects()
    {
        VhostUserSpec spec = VhostUserSpec.Parse("/tmp/x.sock,type=rng");
        Assert.That(spec, Is.EqualTo(new VhostUserSpec("/tmp/x.sock", VirtioDeviceId.Entropy, null, 256, true, null)));
        Assert.That(VhostUserSpec.Parse("s,type=blk,reconnect=off").Reconnect, Is.False);
        Assert.That(VhostUserSpec.Parse("s,type=blk").Kind, Is.EqualTo("blk"));
        Assert.That(VhostUserSpec.Parse("s,device-id=42").Kind, Is.EqualTo("device-id=42"));
    }

    [TestCase("", "socket path")]
    [TestCase("type=blk", "socket path")]
    [TestCase("s", "type=NAME")]
    [TestCase("s,type=floppy", "unknown type 'floppy'")]
    [TestCase("s,device-id=0", "device-id")]
    [TestCase("s,device-id=70000", "device-id")]
    [TestCase("s,type=blk,type=rng", "once")]
    [TestCase("s,type=blk,queues=0", "queues")]
    [TestCase("s,type=blk,queues=65", "queues")]
    [TestCase("s,type=blk,queue-size=100", "power of 2")]
    [TestCase("s,type=blk,queue-size=65536", "queue-size")]
    [TestCase("s,type=blk,reconnect=maybe", "on or off")]
    [TestCase("s,type=blk,reconnect-max=-1", "reconnect-max")]
    [TestCase("s,type=blk,colour=red", "colour=red")]
    public void Bad_specs_are_one_sentence_usage_errors(string text, string mentions)
    {
        UsageException e = Assert.Throws<UsageException>(() => VhostUserSpec.Parse(text))!;
        Assert.That(e.Message, Does.Contain(mentions).And.EndWith("."));
        Assert.That(e.Message, Does.Not.Contain("\n"));
    }
}
